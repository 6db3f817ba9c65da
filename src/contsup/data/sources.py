"""Finding, fetching, verifying and parsing each real dataset on disk."""

from __future__ import annotations

import tarfile
from pathlib import Path

from contsup.data import formats
from contsup.data.download import candidate_dirs, copy_member, download, download_dir, md5sum
from contsup.data.specs import DATASETS, SPECS, STL10_MEMBERS, DatasetSpec
from contsup.data.split import Split
from contsup.errors import ContsupError

_STL_SUBDIR = "stl10_binary"


def get_spec(name: str) -> DatasetSpec:
    """The spec of a real (downloadable) dataset, or a ContsupError naming the valid ones."""
    if name not in SPECS:
        raise ContsupError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return SPECS[name]


def _file(folder: Path, filename: str) -> Path | None:
    """`folder/filename`, or its gunzipped twin for `.gz` names, if it exists."""
    for cand in (folder / filename, folder / filename.removesuffix(".gz")):
        if cand.is_file():
            return cand
    return None


def _stl_dir(folder: Path) -> Path | None:
    """The folder holding the extracted STL-10 members, if complete."""
    for cand in (folder / _STL_SUBDIR, folder):
        if all((cand / m).is_file() for m in STL10_MEMBERS):
            return cand
    return None


def is_present(spec: DatasetSpec, folder: Path) -> bool:
    """Whether `folder` holds a usable copy of the dataset (by file presence only)."""
    return not missing_files(spec, folder)


def missing_files(spec: DatasetSpec, folder: Path) -> list[str]:
    """The dataset's files that `folder` lacks (empty when it holds a usable copy)."""
    if spec.info.name == "stl10" and _stl_dir(folder) is not None:
        return []
    return [f.filename for f in spec.files if _file(folder, f.filename) is None]


def incomplete_copies(name: str, root: str | Path | None = None) -> list[tuple[Path, list[str]]]:
    """Searched folders that hold some of the dataset's files but not all: (folder, missing file names)."""
    spec = get_spec(name)
    out = []
    for folder in candidate_dirs(name, root, spec.system_dirs):
        missing = missing_files(spec, folder) if folder.is_dir() else []
        if missing and len(missing) < len(spec.files):
            out.append((folder, missing))
    return out


def locate(name: str, root: str | Path | None = None) -> Path | None:
    """The first searched folder holding dataset `name`, or None."""
    spec = get_spec(name)
    for folder in candidate_dirs(name, root, spec.system_dirs):
        if is_present(spec, folder):
            return folder
    return None


def _missing_message(spec: DatasetSpec, root: str | Path | None) -> str:
    """Where we looked, and what to fetch by hand into where."""
    looked = ", ".join(str(d) for d in candidate_dirs(spec.info.name, root, spec.system_dirs))
    urls = " ".join(f.url for f in spec.files)
    return (f"{spec.info.name} not found (looked in {looked}); fetch {urls} by hand into "
            f"{download_dir(spec.info.name, root)} or run `contsup data fetch {spec.info.name}`")


def _unreachable_message(spec: DatasetSpec, root: str | Path | None) -> str:
    """What to do when the download itself failed: the files by hand, or a folder that holds them."""
    urls = " ".join(f.url for f in spec.files)
    return (f"copy {urls} by hand into {download_dir(spec.info.name, root)}, or name a folder holding them "
            "with --data-root (contsup train) / --dir (contsup data fetch) or $CONTSUP_DATA")


def presence(name: str, root: str | Path | None = None, download_allowed: bool = True) -> str:
    """One line: the folder holding dataset `name`, or that it is missing and what a run would then do."""
    if name == "synthetic":
        return f"{name}: generated on the fly"
    spec = get_spec(name)
    folder = locate(name, root)
    if folder is not None:
        return f"{name}: found in {folder}"
    looked = ", ".join(str(d) for d in candidate_dirs(name, root, spec.system_dirs))
    then = (f"a run downloads it into {download_dir(name, root)}" if download_allowed
            else "a run stops (download disabled)")
    return f"{name}: MISSING (looked in {looked}); {then}"


def _extract_stl10(archive: Path, folder: Path) -> Path:
    """Extract the labelled STL-10 members from the archive into `folder/stl10_binary`."""
    out = folder / _STL_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(STL10_MEMBERS)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    copy_member(tar.extractfile(member), out / base)
                    wanted.discard(base)
    except formats._READ_ERRORS as err:
        raise formats.corrupt(archive, err) from err
    if wanted:
        raise formats.corrupt(archive, f"archive lacks {', '.join(sorted(wanted))}")
    return out


def fetch(name: str, root: str | Path | None = None, progress: bool = True) -> Path:
    """Return the folder holding `name`, downloading and verifying it first if it is missing."""
    spec = get_spec(name)
    found = locate(name, root)
    if found is not None:
        return found
    folder = download_dir(name, root)
    created = [d for d in (folder, *folder.parents) if not d.exists()]  # removed again if the download fails
    for f in spec.files:
        if _file(folder, f.filename) is None:
            try:
                download(f.url, folder / f.filename, f.md5, progress=progress)
            except ContsupError as err:
                for d in created:  # deepest first; a folder that holds anything stays
                    if d.is_dir() and not any(d.iterdir()):
                        d.rmdir()
                raise ContsupError(f"{err}; {_unreachable_message(spec, root)}") from err
    if name == "stl10":
        archive = folder / spec.files[0].filename
        _extract_stl10(archive, folder)
        archive.unlink()  # 2.6 GB, mostly the unlabeled split we never read
    return folder


def verify(name: str, folder: Path) -> list[str]:
    """Check a present copy: md5 against the published sums, else a full parse; returns notes."""
    spec = get_spec(name)
    notes: list[str] = []
    mismatched = False
    if name == "stl10" and _stl_dir(folder) is not None:
        notes.append("extracted STL-10 binaries (archive md5 checked at download)")
        mismatched = True
    else:
        for f in spec.files:
            path = _file(folder, f.filename)
            got = md5sum(path)
            if got == f.md5:
                notes.append(f"{path.name}: md5 ok")
            else:
                mismatched = True
                notes.append(f"{path.name}: md5 {got} differs from published {f.md5} "
                             "(repackaged copy?)")
    if mismatched:
        train, test = parse(name, folder)
        if (len(train), len(test)) != (spec.train_size, spec.test_size):
            raise ContsupError(f"{name} in {folder} has {len(train)}/{len(test)} train/test "
                               f"images, expected {spec.train_size}/{spec.test_size}")
        notes.append(f"parsed ok: {len(train)} train / {len(test)} test images")
    return notes


def parse(name: str, folder: Path) -> tuple[Split, Split]:
    """Parse the dataset found in `folder` into (train, test)."""
    spec = get_spec(name)
    if name == "stl10":
        sub = _stl_dir(folder) or _extract_stl10(folder / spec.files[0].filename, folder)
        train = formats.load_stl10_bin(sub / "train_X.bin", sub / "train_y.bin")
        return train, formats.load_stl10_bin(sub / "test_X.bin", sub / "test_y.bin")
    paths = [_file(folder, f.filename) for f in spec.files]
    if any(p is None for p in paths):
        raise ContsupError(f"{name}: incomplete copy in {folder}")
    if name == "fashion-mnist":
        tr_x, tr_y, te_x, te_y = paths
        size, classes = spec.info.size, spec.info.num_classes
        return formats.load_idx_pair(tr_x, tr_y, size, classes), formats.load_idx_pair(te_x, te_y, size, classes)
    if name in ("cifar10", "cifar100"):
        return formats.load_cifar_tar(paths[0], spec.info.num_classes)
    if name == "svhn":
        return formats.load_svhn_mat(paths[0]), formats.load_svhn_mat(paths[1])
    raise ContsupError(f"no parser for {name}")


def split_sizes(name: str, folder: Path) -> tuple[int, int]:
    """(train, test) sizes of a present copy, from idx headers or the known sizes (cheap)."""
    spec = get_spec(name)
    if name == "fashion-mnist":
        tr = _file(folder, spec.files[0].filename)
        te = _file(folder, spec.files[2].filename)
        return formats.idx_count(tr), formats.idx_count(te)
    return spec.train_size, spec.test_size


def load_real(name: str, root: str | Path | None, allow_download: bool) -> tuple[Split, Split]:
    """Locate (or, if allowed, fetch) and parse a real dataset."""
    spec = get_spec(name)
    folder = locate(name, root)
    if folder is None:
        if not allow_download:
            raise ContsupError(_missing_message(spec, root) + " (download disabled)")
        folder = fetch(name, root)
    return parse(name, folder)
