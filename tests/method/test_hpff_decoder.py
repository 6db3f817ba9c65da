"""HPFF's patched reconstruction decoders (Zeudfish/HPFF, network/auxiliary_net.py), `recon_patches`."""

import pytest
import torch
import torch.nn.functional as F

from contsup.errors import ContsupError
from contsup.method.recon import Decoder


def test_patched_decoder_is_the_released_codes():
    torch.manual_seed(0)
    one, four = Decoder(16, 3, (16, 16)), Decoder(16, 3, (16, 16), patches=2)
    assert list(one.state_dict()) == list(four.state_dict())[:len(one.state_dict())]  # old checkpoints load
    assert sum(p.numel() for p in four.parameters()) == 4 * sum(p.numel() for p in one.parameters())
    h, pixels = torch.randn(2, 16, 8, 8), torch.rand(2, 3, 16, 16)
    # The code: quadrants of h split at h // 2 and w // 2, each upsampled to half the image, BCE against the
    # image's quadrant, the four losses summed.
    quads = [(slice(None, 4), slice(None, 4)), (slice(None, 4), slice(4, None)), (slice(4, None), slice(None, 4)),
             (slice(4, None), slice(4, None))]
    want = 0
    for i, (r, c) in enumerate(quads):
        part = F.interpolate(h[:, :, r, c], size=(8, 8), mode="bilinear", align_corners=True)
        image = pixels[:, :, 2 * r.start if r.start else None:2 * r.stop if r.stop else None,
                       2 * c.start if c.start else None:2 * c.stop if c.stop else None]
        want = want + F.binary_cross_entropy(torch.sigmoid([four.net, *four.more][i](part)), image)
    torch.testing.assert_close(four.loss(h, pixels), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ContsupError, match="at least 4 x 4"):
        Decoder(16, 3, (16, 16), patches=4).loss(torch.randn(2, 16, 2, 2), pixels)


def test_a_network_trains_with_patched_decoders():
    from tests.conftest import tiny_net

    from contsup.method import local_step

    net = tiny_net(modules=3, context="R0", recon="1,1,1,1", recon_patches=2)
    assert all(len(o.decoder.more) == 3 for o in net.objectives[:-1])
    x = torch.rand(4, 3, 16, 16)
    out = local_step(net, x, torch.randint(0, 10, (4,)), pixels=x)
    assert torch.isfinite(out.losses).all()
    assert all(p.grad is not None for p in net.objectives[0].decoder.more[2].parameters())
