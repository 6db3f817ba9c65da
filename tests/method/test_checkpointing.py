import copy

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_net
from torch import nn
from torch.utils.checkpoint import checkpoint

from contsup.errors import ContsupError
from contsup.memory import measure_peak, saved_bytes
from contsup.method import local_step
from contsup.models import build_arch
from contsup.models.checkpointing import CheckpointedSequential, segment_bounds, segment_count

TOL = 1e-6


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=TOL, atol=TOL)


def run_twice(chain: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two training steps (the running buffers move twice); returns the last output and input gradient."""
    for _ in range(2):
        xi = x.clone().requires_grad_()
        out = chain(xi)
        out.backward(grad)
    return out, xi.grad


def assert_same(plain: nn.Module, other: nn.Module, x: torch.Tensor) -> None:
    """Outputs, input and parameter gradients and every buffer equal after two steps."""
    torch.manual_seed(3)
    grad = torch.randn_like(plain(x))
    for p in plain.parameters():
        p.grad = None
    plain.load_state_dict(other.state_dict())  # the probe above moved plain's buffers
    torch.manual_seed(4)
    out_a, gx_a = run_twice(plain, x, grad)
    torch.manual_seed(4)
    out_b, gx_b = run_twice(other, x, grad)
    assert close(out_a, out_b) and close(gx_a, gx_b)
    for (name, p), q in zip(plain.named_parameters(), other.parameters(), strict=True):
        assert close(p.grad, q.grad), name
    for (name, a), b in zip(plain.named_buffers(), other.buffers(), strict=True):
        assert close(a.double(), b.double()), name


@pytest.mark.parametrize("segments", [1, 2, "sqrt", 7])
def test_checkpointed_resnet_equals_plain(segments):
    torch.manual_seed(0)
    units = list(build_arch("resnet14", 3, 10).double().units)  # 7 units; sqrt -> 3 segments
    ckpt = CheckpointedSequential(*copy.deepcopy(units), segments=segments)
    plain = nn.Sequential(*units)
    assert ckpt.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    assert_same(plain, ckpt, x)
    assert ckpt.segments == {1: 1, 2: 2, "sqrt": 3, 7: 7}[segments]


class TokenBlock(nn.Module):
    """Pre-norm residual MLP on [B, T, D] tokens, with dropout (the recomputation must draw the same mask)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.norm(x)))))


@pytest.mark.parametrize("segments", [2, "sqrt", 5])
def test_checkpointed_token_chain_equals_plain(segments):
    torch.manual_seed(0)
    plain = nn.Sequential(*(TokenBlock(6) for _ in range(5))).double()
    ckpt = CheckpointedSequential(*copy.deepcopy(list(plain)), segments=segments)
    assert_same(plain, ckpt, torch.randn(3, 4, 6, dtype=torch.float64))


def test_weights_load_across_and_inference_is_plain():
    torch.manual_seed(0)
    units = list(build_arch("resnet8", 3, 10).units)
    ckpt = CheckpointedSequential(*copy.deepcopy(units), segments=2)
    plain = nn.Sequential(*units)
    ckpt.load_state_dict(plain.state_dict())
    plain.eval(), ckpt.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain(x), ckpt(x))
    assert torch.equal(plain(x), ckpt(x))  # eval mode with autograd: checkpointed, same function


def test_naive_checkpoint_would_update_batchnorm_twice():
    # Why RestoreBuffers exists: a plain non-reentrant checkpoint moves the running buffers again in backward.
    bn = nn.BatchNorm1d(3)
    x = torch.randn(8, 3, requires_grad=True)
    checkpoint(bn, x, use_reentrant=False).sum().backward()
    assert int(bn.num_batches_tracked) == 2
    ckpt = CheckpointedSequential(nn.BatchNorm1d(3), nn.Identity(), segments=2)
    ckpt(x).sum().backward()
    assert int(ckpt[0].num_batches_tracked) == 1


def test_segments():
    assert segment_count(16, "sqrt") == 4 and segment_count(55, "sqrt") == 7 and segment_count(3, 9) == 3
    assert segment_count(16, 0) == 0 and CheckpointedSequential(nn.Identity(), segments=0).segments == 0
    assert segment_bounds(7, 3) == [0, 2, 5, 7] and segment_bounds(4, 0) == [0, 4]
    for bad in (-1, "half"):
        with pytest.raises(ContsupError):
            segment_count(4, bad)


def test_checkpointing_cuts_resnet32_memory():
    torch.manual_seed(0)
    backbone = build_arch("resnet32", 1, 10)  # 16 units: sqrt -> 4 segments
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    peaks, saved = [], []
    for segments in (1, "sqrt"):
        chain = CheckpointedSequential(*copy.deepcopy(list(backbone.units)), segments=segments)
        classifier = copy.deepcopy(backbone.classifier)

        def loss(chain=chain, classifier=classifier) -> torch.Tensor:
            return F.cross_entropy(classifier(chain(x)), y)

        _, counter = saved_bytes(loss, exclude=chain)
        saved.append(counter.peak)
        peaks.append(measure_peak(lambda loss=loss: loss().backward(), torch.device("cpu"))[1].peak_bytes)
    # Forward: the three segment inputs and the last segment's activations only (measured 0.15x).
    assert saved[1] < 0.25 * saved[0]
    # Whole step, allocator peak: the largest segment recomputed plus gradients (measured 0.47x).
    assert peaks[1] < 0.5 * peaks[0]


def test_checkpointing_inside_local_modules_keeps_their_gradients(batch):
    x, y = batch
    plain, ckpt = tiny_net(2, "R1E"), tiny_net(2, "R1E")
    for k, block in enumerate(ckpt.blocks):
        ckpt.blocks[k] = CheckpointedSequential(*block, segments="sqrt")  # 5 units: 2 segments
    assert plain.state_dict().keys() == ckpt.state_dict().keys()
    outs = [local_step(net, x, y) for net in (plain, ckpt)]
    assert torch.allclose(outs[0].losses, outs[1].losses, atol=1e-5)
    assert torch.allclose(outs[0].logits, outs[1].logits, atol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        assert torch.allclose(a.double(), b.double(), atol=1e-5), name
