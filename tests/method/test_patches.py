import copy

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import plain_head

from contsup.errors import ContsupError
from contsup.method.heads.patches import PatchAveraged, to_patches
from contsup.models import build_arch, probe_shapes


def manual_average(head: torch.nn.Module, h: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad to multiples of n, run the head on each of the n x n slices alone, average the outputs."""
    height, width = h.shape[2:]
    ph, pw = (height + n - 1) // n, (width + n - 1) // n
    padded = torch.zeros(*h.shape[:2], ph * n, pw * n)
    padded[:, :, :height, :width] = h
    outs = [head(padded[:, :, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw]) for i in range(n) for j in range(n)]
    return torch.stack(outs).sum(0) / (n * n)


def trained_head(channels: int, kind: str = "1c2f") -> torch.nn.Module:
    """A LocalHead whose BN statistics are not the defaults, in eval mode (patches must not share statistics)."""
    torch.manual_seed(0)
    head = plain_head(channels, kind)
    with torch.no_grad():
        head(torch.randn(16, channels, 8, 8) * 3 + 1)
    return head.eval()


def test_one_patch_is_the_plain_head_bit_for_bit():
    head = trained_head(16)
    h = torch.randn(4, 16, 32, 32)
    assert torch.equal(PatchAveraged(head, 1)(h), head(h))
    assert torch.equal(to_patches(h, 1), h)
    head.train()
    assert torch.equal(PatchAveraged(head, 1)(h), head(h))


@pytest.mark.parametrize("n,size", [(2, (8, 8)), (2, (7, 9)), (3, (7, 7)), (4, (16, 12))])
def test_average_equals_manual_per_patch_loop(n, size):
    head = trained_head(32)
    h = torch.randn(3, 32, *size)
    with torch.no_grad():
        torch.testing.assert_close(PatchAveraged(head, n)(h), manual_average(head, h, n), rtol=0, atol=1e-6)


def test_patches_of_a_sample_in_order():
    h = torch.arange(2 * 1 * 5 * 4, dtype=torch.float32).view(2, 1, 5, 4)
    p = to_patches(h, 2)
    assert p.shape == (8, 1, 3, 2)
    padded = F.pad(h, (0, 0, 0, 1))
    assert torch.equal(p[4 + 2], padded[1, :, 3:6, 0:2])  # sample 1, patch (1, 0)
    assert torch.equal(p[3, 0, 2], torch.zeros(2))  # the padded row of sample 0's patch (1, 1)


def test_gradient_reaches_the_head_and_the_units_before_the_cut():
    """Every patch's gradient flows back into h (padding dropped) and on into the units that made it."""
    torch.manual_seed(0)
    backbone = build_arch("resnet32", 3, 10)
    head = PatchAveraged(plain_head(16, "1c2f"), 3)
    x = torch.randn(4, 3, 31, 31)
    h = backbone.units[1](backbone.units[0](x))
    h.retain_grad()
    torch.nn.functional.cross_entropy(head(h), torch.arange(4)).backward()
    assert bool((h.grad.abs().sum(dim=(0, 1)) > 0).all())  # every position of h, in every patch
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(p.grad is not None for u in backbone.units[:2] for p in u.parameters())
    assert all(p.grad is None for u in backbone.units[2:] for p in u.parameters())


def test_training_mode_normalises_over_every_patch_of_the_batch():
    """In training, the head's BatchNorm sees the patches of all samples as one batch (its statistics over
    B n^2 patches), updates its running statistics once, and the output is the per-patch head's average."""
    torch.manual_seed(0)
    head = plain_head(8, "1c2f").train()
    reference = copy.deepcopy(head)
    h = torch.randn(3, 8, 7, 9) * 2 + 1
    out = PatchAveraged(head, 2)(h)
    patches = to_patches(h, 2)
    torch.testing.assert_close(out, reference(patches).view(3, 4, -1).mean(dim=1), rtol=0, atol=1e-6)
    bn = head.conv[1]
    conv = reference.conv[0](patches)
    assert int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(bn.running_mean, 0.1 * conv.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, PatchAveraged(head.eval(), 2)(h))  # eval: the running statistics instead


@pytest.mark.parametrize("arch", ["resnet32", "resnet18"])
def test_forward_shapes(arch):
    shapes = probe_shapes(list(build_arch(arch, 3, 10).units), torch.zeros(1, 3, 32, 32))
    for s in shapes:
        head = PatchAveraged(plain_head(s.channels, "1c2f"), 2)
        assert head(torch.randn(2, s.channels, s.height, s.width)).shape == (2, 10)


def test_patches_must_be_positive():
    with pytest.raises(ContsupError):
        PatchAveraged(plain_head(16, "1c2f"), 0)
