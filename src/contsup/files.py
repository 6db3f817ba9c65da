"""Files a run writes and reads back: atomic writes, checked reads of text and JSON, stale temporaries."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from contsup.errors import ContsupError

# Every temporary contsup writes ends `.<pid>.contsup-tmp`; the cleanup removes only names of this form.
TMP_TAIL = ".contsup-tmp"
TEXT_LIMIT = 1 << 20  # bytes of a --config, preset or settings file
JSON_LIMIT = 64 << 20  # bytes of a summary.json or metrics.jsonl


def tmp_suffix() -> str:
    """The suffix of this process's temporaries: `.<pid>.contsup-tmp`."""
    return f".{os.getpid()}{TMP_TAIL}"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path` in one step.

    A reader sees the old file or the new one, never half of one; a crash leaves only
    `<name>.<random>.<pid>.contsup-tmp`, which `remove_stale_temps` deletes on the next start.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=tmp_suffix(), dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically; a NaN or infinity is a bug, so it raises ValueError."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_text_file(path: str | Path, what: str, limit: int = TEXT_LIMIT) -> str:
    """A regular UTF-8 text file of at most `limit` bytes; a FIFO, device, folder, binary or larger file raises.

    The file is opened without blocking (a FIFO cannot hang the read) and checked on the open descriptor.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ContsupError(f"no {what} {path}") from None
    except OSError as err:
        raise ContsupError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ContsupError(f"{what} {path} is not a regular file")
        if info.st_size > limit:
            raise ContsupError(f"{what} {path} is {info.st_size} bytes, more than the {limit} a {what} may hold")
        data = os.read(fd, limit + 1)
    except OSError as err:
        raise ContsupError(f"cannot read {what} {path}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ContsupError(f"{what} {path} is more than the {limit} bytes a {what} may hold")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ContsupError(f"{what} {path} is not UTF-8 text (byte {err.start})") from None
    if "\x00" in text:
        raise ContsupError(f"{what} {path} is a binary file, not text")
    return text


def parse_json(text: str, where: str, what: str) -> Any:
    """JSON text parsed strictly (no NaN or infinity); anything else raises ContsupError naming `where`."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ContsupError(f"cannot read {what} {where} ({reason}); delete it or the folder and run again") from None


def read_json(path: str | Path, what: str, limit: int = JSON_LIMIT) -> Any:
    """Parse a JSON file written by contsup; unreadable or invalid content raises ContsupError naming it."""
    return parse_json(read_text_file(path, what, limit), str(path), what)


def check_out_dir(path: str | Path | None, flag: str) -> Path | None:
    """An output folder named on the command line, refused before any work: empty, a file, or under a file."""
    if path is None:
        return None
    if str(path) == "":
        raise ContsupError(f"{flag} is empty; name a folder")
    folder = Path(path)
    for p in (folder, *folder.parents):
        if os.path.lexists(p) and not p.is_dir():
            raise ContsupError(f"{flag} {folder}: {p} is a file, not a folder; choose another {flag}")
    return folder


def remove_stale_temps(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries `<name>.<random>.<pid>.contsup-tmp` that interrupted writes of `names` left."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    ours = re.compile("(?:" + "|".join(re.escape(n) for n in names) + r")\.[A-Za-z0-9_]+\.\d+" + re.escape(TMP_TAIL))
    stale = [p for p in folder.iterdir() if ours.fullmatch(p.name) and p.is_file() and not p.is_symlink()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
