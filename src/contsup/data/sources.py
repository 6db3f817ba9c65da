"""Finding, fetching, verifying and parsing each real dataset on disk."""

from __future__ import annotations

import tarfile
from pathlib import Path

from contsup.data import formats
from contsup.data.download import candidate_dirs, copy_member, download, download_dir, md5sum
from contsup.data.specs import DATASETS, SPECS, DatasetSpec
from contsup.data.split import Split
from contsup.errors import ContsupError


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


def _extracted(spec: DatasetSpec, folder: Path) -> Path:
    """Where the members of the dataset's archive are extracted to: the archive's name without `.tar.gz`."""
    return folder / spec.files[0].filename.removesuffix(".tar.gz")


def _members_dir(spec: DatasetSpec, folder: Path) -> Path | None:
    """The folder holding the extracted members of the dataset's archive (STL-10's), if complete."""
    for cand in (_extracted(spec, folder), folder):
        if spec.members and all((cand / m).is_file() for m in spec.members):
            return cand
    return None


def is_present(spec: DatasetSpec, folder: Path) -> bool:
    """Whether `folder` holds a usable copy of the dataset (by file presence only)."""
    return not missing_files(spec, folder)


def missing_files(spec: DatasetSpec, folder: Path) -> list[str]:
    """The dataset's files that `folder` lacks (empty when it holds a usable copy)."""
    if _members_dir(spec, folder) is not None:
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


def _extract(spec: DatasetSpec, folder: Path) -> Path:
    """Extract the members the dataset reads from its archive in `folder` (STL-10: the labelled ones)."""
    archive, out = folder / spec.files[0].filename, _extracted(spec, folder)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(spec.members)
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
    if spec.members:
        _extract(spec, folder)
        (folder / spec.files[0].filename).unlink()  # STL-10: 2.6 GB, mostly the unlabeled split never read
    return folder


def verify(name: str, folder: Path) -> list[str]:
    """Check a present copy: md5 against the published sums, else a full parse; returns notes."""
    spec = get_spec(name)
    notes: list[str] = []
    mismatched = False
    if _members_dir(spec, folder) is not None:
        notes.append(f"extracted {name} files (archive md5 checked at download)")
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
    if spec.members:
        sub = _members_dir(spec, folder) or _extract(spec, folder)
        return formats.FORMATS[spec.format]([sub / m for m in spec.members], spec.info)
    paths = [p for f in spec.files if (p := _file(folder, f.filename)) is not None]
    if len(paths) < len(spec.files):
        raise ContsupError(f"{name}: incomplete copy in {folder}")
    return formats.FORMATS[spec.format](paths, spec.info)


def split_sizes(name: str, folder: Path) -> tuple[int, int]:
    """(train, test) sizes of a present copy, from idx headers or the known sizes (cheap)."""
    spec = get_spec(name)
    if spec.format == "idx":  # the counts stand in the files' headers
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
