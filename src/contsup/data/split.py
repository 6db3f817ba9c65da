"""In-memory dataset containers and seeded split helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from contsup.data.specs import DatasetInfo
from contsup.errors import ContsupError


@dataclass
class Split:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        """The examples at `index` (a 1-D long tensor)."""
        return Split(self.images[index], self.labels[index])


@dataclass
class Dataset:
    """A loaded dataset: description plus train/test (and optional val) splits."""

    info: DatasetInfo
    train: Split
    test: Split
    val: Split | None = None


def split_from_numpy(images, labels) -> Split:
    """Wrap numpy arrays (uint8 NCHW images, integer labels) as a contiguous Split."""
    images = np.require(images, requirements="W")  # np.frombuffer views are read-only
    labels = np.require(labels, requirements="W")
    return Split(
        torch.from_numpy(images).to(torch.uint8).contiguous(),
        torch.from_numpy(labels).to(torch.int64).contiguous(),
    )


def carve(train: Split, val_split: int, train_subset: int, seed: int) -> tuple[Split, Split | None]:
    """Hold `val_split` seeded-random training images out, then keep `train_subset` of the rest."""
    n = len(train)
    if val_split < 0 or train_subset < 0:
        raise ContsupError("val_split and train_subset must be >= 0")
    if val_split >= n:
        raise ContsupError(f"val_split={val_split} leaves no training images (train has {n})")
    if train_subset > n - val_split:
        raise ContsupError(
            f"train_subset={train_subset} exceeds the {n - val_split} training images available"
        )
    if val_split == 0 and train_subset == 0:
        return train, None
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    val = train.subset(perm[:val_split].sort().values) if val_split else None
    rest = perm[val_split:]
    if train_subset:
        rest = rest[:train_subset]
    return train.subset(rest.sort().values), val


def seeded_subset(split: Split, size: int, seed: int) -> Split:
    """`size` seeded-random examples of a split, in their original order (a test subset for quick evaluations)."""
    if size > len(split):
        raise ContsupError(f"eval_subset={size} exceeds the {len(split)} test images")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[:size].sort().values)
