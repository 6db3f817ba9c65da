import copy

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import assert_same_training, tiny_net

from contsup.checks import check_run
from contsup.config import RunConfig
from contsup.errors import ContsupError
from contsup.memory import measure_peak
from contsup.models.norm import LeanBatchNorm2d, make_lean
from contsup.models.vit import vit

CPU = torch.device("cpu")


def pair(affine: bool = True, momentum: float | None = 0.1) -> tuple[torch.nn.BatchNorm2d, torch.nn.BatchNorm2d]:
    """A float64 nn.BatchNorm2d with non-trivial weights and a lean copy of it."""
    plain = torch.nn.BatchNorm2d(6, affine=affine, momentum=momentum).double()
    if affine:
        with torch.no_grad():
            plain.weight.uniform_(-1, 2)
            plain.bias.normal_()
    lean = copy.deepcopy(plain)
    assert make_lean(lean) == 1 and type(lean) is LeanBatchNorm2d
    return plain, lean


@pytest.mark.parametrize("n", [5, 13])  # batches that CHUNKS (8) does not divide
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_lean_batchnorm_equals_pytorchs(n, fmt, affine, momentum):
    torch.manual_seed(0)
    plain, lean = pair(affine, momentum)
    x = (3 + 2 * torch.randn(n, 6, 7, 7, dtype=torch.float64)).contiguous(memory_format=fmt)  # mean far from 0
    g = torch.randn_like(x).contiguous(memory_format=torch.contiguous_format)  # a gradient in another format
    outs, grads = [], []
    for bn in (plain, lean):
        xi = x.clone().requires_grad_()
        for _ in range(2):  # the running buffers and the batch count move twice
            out = F.relu(bn(xi), inplace=True)  # as in a block: the output is overwritten, never saved
        out.backward(g)
        outs.append(out)
        grads.append(xi.grad)
    assert torch.equal(outs[0], outs[1])  # the same forward kernel
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
    assert grads[1].is_contiguous(memory_format=fmt)
    for (name, p), q in zip(plain.named_parameters(), lean.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, a), b in zip(plain.named_buffers(), lean.buffers(), strict=True):
        assert torch.equal(a, b), name
    plain.eval(), lean.eval()
    assert torch.equal(plain(x), lean(x))


def test_lean_batchnorm_without_running_statistics():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(4, track_running_stats=False).double()
    lean = copy.deepcopy(plain)
    make_lean(lean)
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    for bn in (plain, lean.eval()):  # without running statistics even eval normalises by the batch
        bn(x.requires_grad_()).pow(2).sum().backward()
    assert torch.equal(plain(x), lean(x))
    torch.testing.assert_close(lean.weight.grad, plain.weight.grad)


def backward_peak(bn: torch.nn.Module) -> int:
    """Bytes the backward of `bn` on a 64 x 16 x 32 x 32 float32 map allocates at its peak (one map: 4 MiB)."""
    x = torch.randn(64, 16, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = bn(x)
    g = torch.randn_like(y)
    return measure_peak(lambda: y.backward(g), CPU)[1].peak_bytes


def test_lean_batchnorm_backward_holds_one_map_less():
    """PyTorch's CPU kernel allocates a temporary beside the input gradient; the lean backward only the gradient
    and slices of an eighth."""
    one_map = 64 * 16 * 32 * 32 * 4
    plain = torch.nn.BatchNorm2d(16)
    lean = copy.deepcopy(plain)
    make_lean(lean)
    native, lean = backward_peak(plain), backward_peak(lean)
    assert native >= 1.9 * one_map  # what the lean backward takes out: if the kernel changes, this says so
    assert lean <= 1.2 * one_map


def test_make_lean_keeps_the_modules_and_their_state():
    net = tiny_net(4, "R1E")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert make_lean(net) == len(bns) > 0
    assert all(type(m) is LeanBatchNorm2d for m in bns)  # the same objects: optimizers keep their parameters
    assert make_lean(net) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("context", ["R0", pytest.param("R1E", marks=pytest.mark.quick)])
def test_lean_norm_network_steps_equal_pytorchs(context, batch):
    """Every BatchNorm of the network (blocks, heads, encoders, the encoders' recomputation) made lean: the same
    losses and gradients over three steps."""
    plain, lean = tiny_net(4, context), tiny_net(4, context, lean_norm=True)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in lean.modules())
    assert_same_training(plain, lean, batch, rtol=1e-4)


def test_lean_norm_refused_without_batchnorm_or_with_bf16():
    from contsup.config import LocalConfig
    from contsup.method.network import LocalNetwork

    with pytest.raises(ContsupError, match="no"):
        LocalNetwork(vit(32, 2, 2, 4, 3, 10, 16), LocalConfig(modules=1, lean_norm=True), torch.zeros(1, 3, 16, 16))
    cfg = RunConfig()
    cfg.local.lean_norm, cfg.train.bf16 = True, True
    with pytest.raises(ContsupError, match="lean-norm"):
        check_run(cfg)
