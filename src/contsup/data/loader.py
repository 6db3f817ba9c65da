"""Device-resident batching with batched, seeded crop/flip augmentation and normalization."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from contsup.data.specs import DatasetInfo
from contsup.data.split import Split
from contsup.device import indexed
from contsup.errors import ContsupError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, epoch]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def source_index(offset: torch.Tensor, size: int, pad: int, mode: str) -> tuple[torch.Tensor, ...]:
    """Per-image source pixel index (B, size) of a crop at `offset` in the padded image.

    Returns (index into the unpadded image, in-bounds mask); reflect padding maps out-of-range
    indices back inside, zero padding clamps them and marks them out of bounds.
    """
    pos = offset[:, None] + torch.arange(size, device=offset.device) - pad
    inside = (pos >= 0) & (pos < size)
    if mode == "reflect":
        pos = pos.abs()
        pos = torch.where(pos > size - 1, 2 * (size - 1) - pos, pos)
    elif mode == "constant":
        pos = pos.clamp(0, size - 1)
    else:
        raise ContsupError(f"unknown pad mode {mode!r} (use 'reflect' or 'constant')")
    return pos, inside


def augment(images: torch.Tensor, index: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
            flip: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Padded random crop + flip of `images[index]` as one gather; uint8 (B, C, H, W) out.

    `dy`, `dx` in [0, 2*pad] are crop offsets in the padded image; `flip` is a bool mask.
    """
    _, c, h, w = images.shape
    rows, row_in = source_index(dy, h, pad, mode)
    cols, col_in = source_index(dx, w, pad, mode)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    col_in = torch.where(flip[:, None], col_in.flip(1), col_in)
    chan = torch.arange(c, device=images.device)
    out = images[index[:, None, None, None], chan[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    if mode == "constant" and pad > 0:
        keep = row_in[:, None, :, None] & col_in[:, None, None, :]
        out = out * keep
    return out


class DeviceLoader:
    """Whole split held as uint8 on `device`; batches built there."""

    def __init__(self, split: Split, info: DatasetInfo, batch_size: int,
                 device: torch.device | str = "cpu", train: bool = False, seed: int = 0,
                 drop_last: bool | None = None) -> None:
        if batch_size < 1:
            raise ContsupError(f"batch_size must be >= 1, got {batch_size}")
        self.device = indexed(device)  # `cuda` is the current GPU, with its index
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.info = info
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        self.epoch = 0
        shape = (1, info.channels, 1, 1)
        mean = torch.tensor(info.mean, dtype=torch.float32, device=self.device).view(shape)
        std = torch.tensor(info.std, dtype=torch.float32, device=self.device).view(shape)
        self.mean, self.std = mean, std
        self._scale = 1.0 / (255.0 * std)
        self._shift = mean / std

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (seed, epoch)-determined batches the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = int(self.labels.shape[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> float32 normalized with the dataset mean/std."""
        return x.float() * self._scale - self._shift

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized float images back to [0, 1] pixel units."""
        return x * self.std + self.mean

    def _plan(self) -> tuple[torch.Tensor, ...]:
        """Order, crop offsets and flip mask of the whole epoch, drawn on CPU then moved."""
        n = int(self.labels.shape[0])
        if not self.train:
            return (torch.arange(n, device=self.device),)
        gen = epoch_generator(self.seed, self.epoch)
        perm = torch.randperm(n, generator=gen)
        offsets = torch.randint(0, 2 * self.info.pad + 1, (2, n), generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5
        if not self.info.flip:
            flip.zero_()
        return tuple(t.to(self.device) for t in (perm, offsets[0], offsets[1], flip))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 normalized (B,C,H,W), y int64 (B,)) on the device."""
        plan = self._plan()
        n, b = int(self.labels.shape[0]), self.batch_size
        for i in range(len(self)):
            sl = slice(i * b, min((i + 1) * b, n))
            if not self.train:
                yield self.normalize(self.images[sl]), self.labels[sl]
                continue
            perm, dy, dx, flip = (t[sl] for t in plan)
            x = augment(self.images, perm, dy, dx, flip, self.info.pad, self.info.pad_mode)
            yield self.normalize(x), self.labels[perm]
