import copy

import pytest
import torch
from tests.conftest import assert_same_training, tiny_net

from contsup.method import local_step
from contsup.method.context import ImageEncoder, ResidualEncoder
from contsup.models.chain import Shape

TOL = 1e-5


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=TOL, atol=TOL)


def encoders() -> dict[str, torch.nn.Module]:
    target = Shape((20, 4, 4))
    return {
        "image": ImageEncoder(3, target),
        "image pooled": ImageEncoder(3, target, pool_first=True),
        "residual": ResidualEncoder(6, target),
    }


@pytest.mark.parametrize("name", ["image", "image pooled", "residual"])
@pytest.mark.parametrize("max_elements", [0, 7 * 64])  # 7 channels of 8x8 a chunk: chunks 7, 7, 6
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_lean_encoder_equals_straightforward(name, max_elements, fmt):
    # float64: the conv bias in front of BN has a zero gradient, which float32 rounds to noise near 1e-5.
    torch.manual_seed(0)
    plain = encoders()[name].double().train().to(memory_format=fmt)
    lean = copy.deepcopy(plain)
    lean.lean, lean.max_elements = True, max_elements
    x = torch.randn(5, plain.net[0].in_channels, 8, 8, dtype=torch.float64).contiguous(memory_format=fmt)
    grad = torch.randn(5, 20, 4, 4, dtype=torch.float64).contiguous(memory_format=fmt)
    outs, input_grads = [], []
    for enc in (plain, lean):
        xi = x.clone().requires_grad_()
        for _ in range(2):  # the running buffers move twice
            out = enc(xi)
        out.backward(grad)
        outs.append(out)
        input_grads.append(xi.grad)
    assert close(*outs) and close(*input_grads)
    for (n, p), q in zip(plain.named_parameters(), lean.parameters(), strict=True):
        assert close(p.grad, q.grad), n
    for (n, a), b in zip(plain.named_buffers(), lean.buffers(), strict=True):
        assert close(a.float(), b.float()), n
    plain.eval(), lean.eval()
    assert close(plain(x), lean(x))


@pytest.mark.parametrize("context", ["E", "R1", pytest.param("R1E", marks=pytest.mark.quick)])
def test_lean_network_steps_equal_straightforward(context, batch):
    plain, lean = tiny_net(4, context, lean_context=False), tiny_net(4, context)
    # The last cut's encoder of this ResNet-20 runs in several channel chunks (16x16 images).
    enc = lean.context[-1].residual[0] if context == "R1" else lean.context[-1].image
    assert 0 < enc.max_elements < enc.net[-3].out_channels * 16 * 16
    assert_same_training(plain, lean, batch, rtol=TOL, atol=TOL)


def test_lean_recompute_keeps_the_forward_autocast(batch):
    x, y = batch
    plain, lean = tiny_net(4, "R1E", lean_context=False), tiny_net(4, "R1E")
    for net in (plain, lean):
        local_step(net, x, y, amp=torch.autocast("cpu", torch.bfloat16))
    for (n, p), q in zip(plain.context.named_parameters(), lean.context.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-2, atol=1e-2), n


def test_other_batchnorms_run_straightforward():
    class OtherBN(torch.nn.BatchNorm2d):
        pass

    enc = ResidualEncoder(6, Shape((20, 4, 4)), lean=True)
    x = torch.randn(5, 6, 8, 8)
    assert type(enc(x).grad_fn).__name__ == "_LeanEncodeBackward"
    enc.net[1] = OtherBN(20)
    assert type(enc(x).grad_fn).__name__ != "_LeanEncodeBackward"


def test_lean_backward_holds_the_earlier_layers_apart_from_the_chunks():
    """The image encoder's backward: the last layer's input (12 channels, 0.75 of the output map) and one chunk's
    working set (conv and BN outputs, the ReLU's and BN's input gradients and BN backward's temporary: 5 maps on
    CPU) at once, 5.75 maps; the earlier layer's saved conv output alive beside them (the one-pass recompute)
    would add 0.75."""
    from contsup.memory import measure_peak

    torch.manual_seed(0)
    enc = ImageEncoder(3, Shape((16, 16, 16)), lean=True, max_elements=16 * 16 * 16).train()
    out = enc(torch.randn(8, 3, 16, 16))
    grad = torch.randn_like(out)
    _, peak = measure_peak(lambda: out.backward(grad), torch.device("cpu"))
    assert peak.peak_bytes <= 6 * grad.numel() * grad.element_size()



def test_lean_encoder_recomputes_with_the_lean_batchnorm(monkeypatch):
    """With lean_norm the encoder's recomputation in backward runs the lean BatchNorm too (its forward ran the same
    kernel either way); with PyTorch's BatchNorm it does not."""
    from contsup.method.context import lean as lean_module
    from contsup.models.norm import make_lean

    calls = []

    def counted(*args, **kw):
        calls.append(1)
        return lean_batch_norm(*args, **kw)

    lean_batch_norm = lean_module.lean_batch_norm
    monkeypatch.setattr(lean_module, "lean_batch_norm", counted)
    for lean_norm in (False, True):
        enc = ResidualEncoder(6, Shape((20, 4, 4)), lean=True).train()
        if lean_norm:
            make_lean(enc)
        enc(torch.randn(5, 6, 8, 8, requires_grad=True)).sum().backward()
        assert len(calls) == lean_norm
