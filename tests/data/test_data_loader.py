"""DeviceLoader: shapes, padding modes, flips, normalization, determinism."""

from __future__ import annotations

import pytest
import torch

from contsup.data import DatasetInfo, DeviceLoader, Split
from contsup.data.loader import augment


def _split(n=10, c=2, s=6):
    images = torch.arange(n * c * s * s, dtype=torch.int64).remainder(251).add(1)
    return Split(images.to(torch.uint8).view(n, c, s, s), torch.arange(n) % 3)


def _info(pad=2, mode="reflect", flip=True, c=2, s=6):
    return DatasetInfo("t", c, s, 3, (0.25,) * c, (0.5,) * c, pad, mode, flip)


def test_shapes_and_lengths():
    split = _split(n=10)
    train = DeviceLoader(split, _info(), 4, train=True)
    test = DeviceLoader(split, _info(), 4)
    assert len(train) == 2 and len(test) == 3
    batches = list(train)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 2, 6, 6)] * 2
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    assert [len(y) for _, y in test] == [4, 4, 2]


def test_eval_is_plain_normalization():
    split = _split()
    loader = DeviceLoader(split, _info(), 16)
    (x, y), = list(loader)
    expected = (split.images.float() / 255 - 0.25) / 0.5
    assert torch.allclose(x, expected, atol=1e-6) and torch.equal(y, split.labels)
    assert torch.allclose(loader.denormalize(x), split.images.float() / 255, atol=1e-6)


def _corner(mode):
    """Crop at offset (0, 0) with pad 2, no flip, of one image."""
    img = _split(n=1)
    idx, zero = torch.tensor([0]), torch.tensor([0])
    return img.images[0], augment(img.images, idx, zero, zero, torch.tensor([False]), 2, mode)[0]


def test_zero_padding_corner():
    img, out = _corner("constant")
    assert (out[:, :2, :] == 0).all() and (out[:, :, :2] == 0).all()
    assert torch.equal(out[:, 2:, 2:], img[:, :4, :4])


def test_reflect_padding_corner():
    img, out = _corner("reflect")
    ref = torch.nn.functional.pad(img[None].float(), (2, 2, 2, 2), mode="reflect")[0]
    assert torch.equal(out.float(), ref[:, :6, :6])
    assert out[0, 0, 0] == img[0, 2, 2]  # reflect excludes the edge pixel


def test_offsets_match_pad_then_crop():
    split = _split(n=5)
    idx = torch.arange(5)
    dy, dx = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([4, 0, 2, 3, 1])
    flip = torch.tensor([True, False, True, False, False])
    for mode in ("reflect", "constant"):
        out = augment(split.images, idx, dy, dx, flip, 2, mode)
        padded = torch.nn.functional.pad(split.images.float(), (2, 2, 2, 2), mode=mode)
        for i in range(5):
            crop = padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 6]
            if flip[i]:
                crop = crop.flip(-1)
            assert torch.equal(out[i].float(), crop), (mode, i)


def test_flip_exactly_masked_images():
    split = _split(n=6)
    idx = torch.arange(6)
    center = torch.full((6,), 2)
    mask = torch.tensor([True, False, False, True, True, False])
    out = augment(split.images, idx, center, center, mask, 2, "constant")
    assert torch.equal(out[mask], split.images[mask].flip(-1))
    assert torch.equal(out[~mask], split.images[~mask])


def test_no_flip_when_info_says_so():
    split = _split(n=32)
    split.labels = torch.arange(32)
    loader = DeviceLoader(split, _info(pad=0, flip=False), 32, train=True)
    (x, y), = list(loader)
    assert torch.allclose(loader.denormalize(x) * 255, split.images[y].float(), atol=1e-3)


def test_determinism_by_seed_and_epoch():
    split = _split(n=40)

    def run(seed, epoch):
        loader = DeviceLoader(split, _info(), 8, train=True, seed=seed)
        loader.set_epoch(epoch)
        return [torch.cat([x.flatten(), y.float()]) for x, y in loader]

    a, b = run(0, 3), run(0, 3)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, run(0, 4), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, run(1, 3), strict=True))


@pytest.mark.quick
def test_train_epoch_covers_each_image_once():
    split = _split(n=12)
    split.labels = torch.arange(12)
    loader = DeviceLoader(split, _info(), 4, train=True)
    ys = torch.cat([y for _, y in loader])
    assert sorted(ys.tolist()) == list(range(12)) and ys.tolist() != list(range(12))


@pytest.mark.parametrize("mode", ["median"])
def test_bad_pad_mode(mode):
    from contsup.errors import ContsupError

    with pytest.raises(ContsupError):
        list(DeviceLoader(_split(), _info(mode=mode), 4, train=True))
