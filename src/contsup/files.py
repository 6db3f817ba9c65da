"""Files a run writes and reads back: atomic writes, checked JSON reads, stale temporaries."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from contsup.errors import ContsupError

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path` in one step.

    A reader sees the old file or the new one, never half of one; a crash leaves only
    `<name>.<random>.tmp`, which `remove_stale_temps` deletes on the next start.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
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


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file written by contsup; unreadable or invalid content raises ContsupError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ContsupError(f"cannot read {what} {path} ({reason}); delete it or the folder and run again") from None


def remove_stale_temps(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries `<name>.*.tmp` that interrupted atomic writes of `names` left in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for name in names for p in folder.glob(f"{name}.*{TMP_SUFFIX}") if p.is_file() and not p.is_symlink()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
