"""Datasets: official formats, checksummed downloads, on-device batching and augmentation."""

from __future__ import annotations

from pathlib import Path

from contsup.data.download import check_data_dir
from contsup.data.loader import DeviceLoader
from contsup.data.sources import fetch, get_spec, load_real, locate
from contsup.data.specs import DATASETS, SPECS, DatasetInfo
from contsup.data.split import Dataset, Split, carve
from contsup.data.synthetic import SyntheticOptions, make_synthetic, synthetic_info
from contsup.errors import ContsupError

__all__ = [
    "DATASETS", "SPECS", "Dataset", "DatasetInfo", "DeviceLoader", "Split", "SyntheticOptions",
    "dataset_info", "fetch", "load_dataset", "locate", "published_sizes",
]


def dataset_info(name: str, synthetic: SyntheticOptions | None = None) -> DatasetInfo:
    """The DatasetInfo of `name` without loading any data."""
    if name == "synthetic":
        return synthetic_info(synthetic or SyntheticOptions())
    return get_spec(name).info


def published_sizes(name: str) -> tuple[int, int]:
    """The training and test images of `name` as published (the synthetic set's defaults), without loading it."""
    if name == "synthetic":
        opts = SyntheticOptions()
        return opts.train, opts.test
    spec = get_spec(name)
    return spec.train_size, spec.test_size


def load_dataset(
    name: str,
    root: str | Path | None = None,
    download: bool = True,
    val_split: int = 0,
    train_subset: int = 0,
    seed: int = 0,
    synthetic: SyntheticOptions | None = None,
) -> Dataset:
    """Load dataset `name` (fetching it if allowed), with optional seeded val split and subset."""
    if name not in DATASETS:
        raise ContsupError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    check_data_dir(root)
    if name == "synthetic":
        opts = synthetic or SyntheticOptions()
        train, test = make_synthetic(opts)
        info = synthetic_info(opts)
    else:
        train, test = load_real(name, root, download)
        info = get_spec(name).info
    if len(test) == 0:
        raise ContsupError(f"the test split of {name} holds no image; its copy is damaged (fetch it again)")
    train, val = carve(train, val_split, train_subset, seed)
    return Dataset(info=info, train=train, test=test, val=val)
