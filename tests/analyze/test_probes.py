import math

import pytest
import torch

from contsup.analyze import ProbeConfig, ReconConfig, decoder_probe, label_entropy, linear_probe, mlp_probe
from contsup.analyze.probes import flatten_features


def labels(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return labels(600, 0), labels(300, 1)


CFG = ProbeConfig(linear_steps=50, mlp=True, mlp_steps=150, mlp_hidden=64)


def test_probes_read_labels_copied_into_features(data):
    ytr, yte = data
    # Features that are a (scaled) copy of the one-hot labels, as a 10x2x2 map, plus a little noise.
    feat = lambda y, s: (torch.eye(10)[y][:, :, None, None].expand(-1, -1, 2, 2)  # noqa: E731
                         + 0.01 * torch.randn(len(y), 10, 2, 2, generator=torch.Generator().manual_seed(s)))
    xtr, xte = flatten_features(feat(ytr, 2), 4), flatten_features(feat(yte, 3), 4)
    lin = linear_probe(xtr, ytr, xte, yte, 10, CFG)
    assert lin.acc == 100.0 and lin.ce < 0.05
    mlp = mlp_probe(xtr, ytr, xte, yte, 10, CFG, seed=0)
    assert mlp.acc == 100.0 and mlp.ce < 0.2


def test_probes_on_noise_are_at_chance(data):
    ytr, yte = data
    g = torch.Generator().manual_seed(4)
    xtr, xte = torch.randn(600, 32, generator=g), torch.randn(300, 32, generator=g)
    lin = linear_probe(xtr, ytr, xte, yte, 10, CFG)
    mlp = mlp_probe(xtr, ytr, xte, yte, 10, CFG, seed=0)
    for result in (lin, mlp):
        assert 2.0 < result.acc < 20.0  # chance is 10%
        assert result.ce > label_entropy(yte, 10) - 0.02  # no information about y: CE >= H(y), up to noise
    assert lin.train_acc > 25.0  # it does fit its training set: the held-out score is what tells


def test_label_entropy_and_pooling():
    assert label_entropy(torch.arange(10), 10) == pytest.approx(math.log(10))
    assert label_entropy(torch.zeros(5, dtype=torch.long), 10) == 0.0
    h = torch.randn(3, 4, 8, 8)
    assert flatten_features(h, 2).shape == (3, 16)
    assert torch.allclose(flatten_features(h, 2)[:, 0], h[:, 0, :4, :4].mean(dim=(1, 2)))
    assert flatten_features(h, 0).shape == (3, 256) and flatten_features(h, 16).shape == (3, 256)


def smooth_images(n: int, seed: int) -> torch.Tensor:
    coarse = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(12, 12), mode="bilinear", align_corners=False)


def test_decoder_rebuilds_identity_features_not_noise():
    train, test = smooth_images(400, 0), smooth_images(200, 1)
    cfg = ReconConfig(steps=150, batch_size=32, lr=1e-2)
    ident = decoder_probe(train, train, test, test, cfg, seed=0)
    g = torch.Generator().manual_seed(2)
    noise = decoder_probe(torch.randn(400, 1, 12, 12, generator=g), train,
                          torch.randn(200, 1, 12, 12, generator=g), test, cfg, seed=0)
    assert ident.psnr > 25.0 and ident.mse < 0.1 * noise.mse
    # Features at a lower resolution are upsampled to the image by the decoder.
    half = decoder_probe(train[..., ::2, ::2], train, test[..., ::2, ::2], test, cfg, seed=0)
    assert half.psnr > noise.psnr + 5.0


def test_same_seed_same_numbers(data):
    ytr, yte = data
    g = torch.Generator().manual_seed(5)
    xtr, xte = torch.randn(600, 16, generator=g), torch.randn(300, 16, generator=g)
    assert mlp_probe(xtr, ytr, xte, yte, 10, CFG, 3) == mlp_probe(xtr, ytr, xte, yte, 10, CFG, 3)
    assert linear_probe(xtr, ytr, xte, yte, 10, CFG) == linear_probe(xtr, ytr, xte, yte, 10, CFG)
    imgs = smooth_images(64, 0)
    cfg = ReconConfig(steps=5, batch_size=16)
    assert decoder_probe(imgs, imgs, imgs, imgs, cfg, 1) == decoder_probe(imgs, imgs, imgs, imgs, cfg, 1)
    assert decoder_probe(imgs, imgs, imgs, imgs, cfg, 1) != decoder_probe(imgs, imgs, imgs, imgs, cfg, 2)


def test_token_features_pool_over_tokens_and_decode_from_their_grid():
    from contsup.analyze.recon_probe import token_map
    from contsup.errors import ContsupError

    h = torch.randn(5, 17, 6)  # a class token and a 4 x 4 grid of patch tokens, width 6
    assert torch.equal(flatten_features(h, 4), h.mean(dim=1))
    assert flatten_features(h, 0).shape == (5, 17 * 6)
    grid = token_map(h)
    assert grid.shape == (5, 6, 4, 4) and torch.equal(grid[:, :, 1, 2], h[:, 1 + 1 * 4 + 2])  # row 1, column 2
    assert torch.equal(token_map(h[:, 1:]), grid)  # without a class token
    with pytest.raises(ContsupError):
        token_map(torch.randn(5, 15, 6))
    pixels = torch.rand(40, 1, 8, 8)
    tokens = pixels.reshape(40, 1, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(40, 16, 4)  # 2x2 patches as tokens
    result = decoder_probe(tokens[:30], pixels[:30], tokens[30:], pixels[30:], ReconConfig(steps=50), seed=0)
    assert math.isfinite(result.psnr)
