import copy

import pytest
import torch
from tests.conftest import tiny_net

from contsup.train.steps import LocalStep


@pytest.mark.parametrize("context", ["R0", "R1E"])
def test_channels_last_step_on_cpu_equals_contiguous(context, batch):
    """--channels-last is honoured on the CPU (not only CUDA): same losses and gradients, other layout."""
    net = tiny_net(4, context)
    plain = LocalStep(net, torch.device("cpu"))
    fast = LocalStep(copy.deepcopy(net), torch.device("cpu"), channels_last=True)
    convs = [m.weight for m in fast.net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    layouts = []  # the batch's layout as the first block sees it
    fast.net.blocks[0].register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                       and not args[0].is_contiguous()))
    (losses_a, logits_a, _), (losses_b, logits_b, _) = plain.train(batch), fast.train(batch)
    assert torch.allclose(losses_a, losses_b, atol=1e-4) and torch.allclose(logits_a, logits_b, atol=1e-4)
    for (name, p), q in zip(plain.net.named_parameters(), fast.net.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-3), name
    logits_a, _ = plain.infer(batch)
    logits_b, _ = fast.infer(batch)
    assert torch.allclose(logits_a, logits_b, atol=1e-4)
    assert layouts == [True, True]  # a training and an inference batch
