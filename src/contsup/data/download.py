"""Where datasets live and how they arrive: search paths, checksummed atomic downloads."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from contsup.errors import ContsupError

_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The per-user cache folder of contsup: `$XDG_CACHE_HOME/contsup` or `~/.cache/contsup`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "contsup"


def candidate_dirs(
    name: str, root: str | Path | None, system_dirs: tuple[str, ...] = ()
) -> list[Path]:
    """Folders searched for dataset `name`, in order; an explicit `root` is searched alone."""
    if root is not None:
        return [check_data_dir(root)]
    dirs = []
    env = os.environ.get("CONTSUP_DATA")
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs.append(cache_dir() / name)
    dirs.extend(Path(d) for d in system_dirs)
    return dirs


def check_data_dir(root: str | Path | None) -> Path | None:
    """A dataset folder named by the user, refused in one line when it is empty or names something not a folder."""
    if root is None:
        return None
    if str(root) == "":
        raise ContsupError("the dataset folder (--data-dir) is empty; name a folder")
    folder = Path(root).expanduser()
    if os.path.lexists(folder) and not folder.is_dir():
        raise ContsupError(f"dataset folder {folder} is not a folder; --data-dir names the folder holding the files")
    for parent in folder.parents:
        if os.path.lexists(parent) and not parent.is_dir():
            raise ContsupError(f"dataset folder {folder}: {parent} is a file, not a folder; choose another --data-dir")
    return folder


def download_dir(name: str, root: str | Path | None) -> Path:
    """Where a download of `name` goes: `root`, else `$CONTSUP_DATA/<name>`, else the cache dir."""
    return candidate_dirs(name, root)[0]


def md5sum(path: str | Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | Path, md5: str | None = None, progress: bool = True) -> Path:
    """Stream `url` to `dest.part`, check its md5, rename to `dest`; nothing left on failure."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                           disable=not progress, leave=False)
                with bar:
                    for chunk in iter(lambda: resp.read(_CHUNK), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
                if total is not None and out.tell() != total:
                    raise ContsupError(
                        f"download of {url} truncated: got {out.tell()} of {total} bytes"
                    )
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise ContsupError(f"cannot download {url}: {reason}") from err
        if md5 is not None:
            got = md5sum(part)
            if got != md5.lower():
                raise ContsupError(
                    f"checksum mismatch for {url}: expected md5 {md5}, got {got} "
                    "(download discarded)"
                )
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def copy_member(src, dest: Path) -> None:
    """Copy a readable binary stream to `dest` atomically (via `dest.part`)."""
    part = dest.with_name(dest.name + ".part")
    try:
        with open(part, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
