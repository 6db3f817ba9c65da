"""Static description of each dataset: official files, checksums, shapes, augmentation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the loader need to know about a dataset's images."""

    name: str
    channels: int
    size: int  # square image side
    num_classes: int
    mean: tuple[float, ...]  # per channel, [0,1] pixel units
    std: tuple[float, ...]
    pad: int
    pad_mode: str  # "reflect" | "constant" (zero)
    flip: bool


@dataclass(frozen=True)
class RemoteFile:
    """One official file: where it is published and its published md5."""

    url: str
    filename: str
    md5: str
    size: int = 0  # bytes, 0 when unknown (only used for messages)


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable dataset: its info, official files, their format and known split sizes."""

    info: DatasetInfo
    files: tuple[RemoteFile, ...]
    format: str  # the reader of its files (`contsup.data.formats.FORMATS`)
    train_size: int
    test_size: int
    homepage: str
    system_dirs: tuple[str, ...] = ()  # read-only copies installed by the OS (searched last)
    members: tuple[str, ...] = ()  # files extracted from its one archive and read (else its files are read)


_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
_CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)

# Fashion-MNIST: the paper does not train on it, so augmentation is our choice: 28x28 clothing has
# black borders, hence zero ("constant") padding by 2 then a 28x28 random crop, plus horizontal flip
# (garments are left/right symmetric). Mean/std are those of the 60000 training images.
FASHION_MNIST = DatasetSpec(
    info=DatasetInfo("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), 2, "constant", True),
    files=tuple(
        RemoteFile(_FMNIST_URL + name, name, md5)
        for name, md5 in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )
    ),
    format="idx",
    train_size=60000,
    test_size=10000,
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    system_dirs=("/usr/share/datasets/fashion-mnist",),  # Debian package dataset-fashion-mnist
)

# CIFAR: the standard recipe (reflect pad 4, random 32x32 crop, flip); CIFAR-100 uses the same
# normalization constants as CIFAR-10.
CIFAR10 = DatasetSpec(
    info=DatasetInfo("cifar10", 3, 32, 10, _CIFAR_MEAN, _CIFAR_STD, 4, "reflect", True),
    files=(
        RemoteFile(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        ),
    ),
    format="cifar-tar",
    train_size=50000,
    test_size=10000,
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
)

CIFAR100 = DatasetSpec(
    info=DatasetInfo("cifar100", 3, 32, 100, _CIFAR_MEAN, _CIFAR_STD, 4, "reflect", True),
    files=(
        RemoteFile(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
    ),
    format="cifar-tar",
    train_size=50000,
    test_size=10000,
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
)

# SVHN (cropped digits, train + test only, no "extra"): zero pad 2, no flip (digits are not
# mirror-symmetric). Labels: the .mat files use 10 for the digit 0; we map it to 0.
SVHN = DatasetSpec(
    info=DatasetInfo("svhn", 3, 32, 10, (0.5,) * 3, (0.5,) * 3, 2, "constant", False),
    files=(
        RemoteFile(
            "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
            "train_32x32.mat",
            "e26dedcc434d2e4c54c9b2d4a06d8373",
        ),
        RemoteFile(
            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
            "test_32x32.mat",
            "eb5a983be6a315427106f1b164d9cef3",
        ),
    ),
    format="svhn-mat",
    train_size=73257,
    test_size=26032,
    homepage="http://ufldl.stanford.edu/housenumbers/",
)

# STL-10 (labelled part only): pad 4 + random 96x96 crop + flip. The paper says "pad 4, random
# crop, flip" without a mode; we pad with zeros ("constant"), the torchvision default.
STL10 = DatasetSpec(
    info=DatasetInfo("stl10", 3, 96, 10, (0.5,) * 3, (0.5,) * 3, 4, "constant", True),
    files=(
        RemoteFile(
            "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
            "stl10_binary.tar.gz",
            "91f7769df0f17e558f3565bffb0c7dfb",
        ),
    ),
    format="stl10-bin",
    train_size=5000,
    test_size=8000,
    homepage="https://cs.stanford.edu/~acoates/stl10/",
    members=("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"),  # not the 2.4 GB unlabeled_X.bin
)

# Every downloadable dataset by name: a new one is a spec above, listed here (and a reader in formats.py when
# its file format is new).
SPECS: dict[str, DatasetSpec] = {s.info.name: s for s in (FASHION_MNIST, CIFAR10, CIFAR100, SVHN, STL10)}

DATASETS: list[str] = [*SPECS, "synthetic"]
