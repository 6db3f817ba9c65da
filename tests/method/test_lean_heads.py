import copy

import pytest
import torch

from contsup.method.heads import HEADS, LocalHead
from contsup.method.lean import lean_head
from contsup.profile.memory import saved_bytes


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("channels", [8, 64])  # below 64: C -> 2C with stride 2; from 64: stride 1
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_lean_head_equals_plain(kind, channels, dtype, tol):
    torch.manual_seed(0)
    plain = LocalHead(channels, kind, 10, width=16).to(dtype).train()
    lean = copy.deepcopy(plain)
    x = torch.randn(6, channels, 6, 6, dtype=dtype)
    grad = torch.randn(6, 10, dtype=dtype)
    outs, input_grads = [], []
    for run in (plain, lambda h: lean_head(lean, h)):
        for _ in range(2):  # the running buffers move twice
            xi = x.clone().requires_grad_()
            out = run(xi)
            out.backward(grad)
        outs.append(out)
        input_grads.append(xi.grad)
    assert close(*outs, tol) and close(*input_grads, tol)
    for (name, p), q in zip(plain.named_parameters(), lean.parameters(), strict=True):
        assert close(p.grad, q.grad, tol), name
    for (name, a), b in zip(plain.named_buffers(), lean.buffers(), strict=True):  # num_batches_tracked: 2
        assert close(a.double(), b.double(), tol), name
    assert lean.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("kind", ["1c1f", "1c2f", "2c2f"])  # a 0c head saves only its pooled input anyway
def test_lean_head_saves_only_its_input(kind):
    torch.manual_seed(0)
    head = LocalHead(16, kind, 10).train()
    h = torch.randn(4, 16, 8, 8, requires_grad=True)
    _, plain = saved_bytes(lambda: head(h), exclude=head)
    _, lean = saved_bytes(lambda: lean_head(head, h), exclude=head)
    assert lean.peak == lean.total == h.numel() * h.element_size()
    assert plain.total > lean.total
