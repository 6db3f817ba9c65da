"""Checkpoints: plain data only, written atomically every epoch, checked when read (docs/security.md).

A checkpoint is a dict of tensors, numbers, strings, lists and dicts; it is read with
`torch.load(weights_only=True)`, which refuses anything else instead of running it. Before that
load, the file must be a regular file of at most MAX_BYTES whose zip entries are stored uncompressed
(as torch.save writes them) and fit in the file, so nothing is inflated beyond the file's own size;
after it, every tensor must be dense, on the CPU and of a real dtype, and the plain data around them
nested at most MAX_DEPTH deep. The model's tensors carry a sha256 digest, so a damaged file is
reported instead of evaluated.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch

from contsup.errors import ContsupError
from contsup.files import atomic_write
from contsup.train.runfolder import CHECKPOINT

MAX_BYTES = 16 << 30  # a checkpoint file's size; ResNet-110 at K = 16 writes about 30 MB
MAX_ENTRIES = 100_000  # zip entries: one per tensor storage
MAX_DEPTH = 32  # nesting of the lists and dicts around the tensors
MAX_NODES = 1_000_000  # values in the checkpoint, tensors and plain data together
FORMAT = "contsup-checkpoint"
VERSION = 3  # 2: the model's tensors carry a sha256 digest; 3: optimizer state by name, the resolved plan
# Keys every checkpoint holds, with their types (`meta` is checked by its reader: contsup.run.run_from_meta).
FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "model": dict, "model_sha256": str, "optimizer": dict, "history": list,
    "train_time": (int, float), "images": int, "train_config": dict, "meta": dict,
}


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` (with the model's digest) to `path` through a temporary file and an atomic rename."""
    full = {"format": FORMAT, "version": VERSION, **payload, "model_sha256": tensor_digest(payload["model"])}

    def write(tmp: str) -> None:
        try:
            torch.save(full, tmp)
        except RuntimeError as err:  # torch's zip writer reports a failed write (disk full, ...) as RuntimeError
            raise OSError(errno.EIO, f"writing the checkpoint failed ({str(err).strip().splitlines()[0][:200]})") \
                from None

    atomic_write(path, write)


_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _refusal(path: Path, err: Exception) -> str:
    """One line saying why torch's restricted unpickler (or the zip reader) refused a file."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"refusing {path}: it holds a Python object ({found.group(1)}) that loading would have to run, "
                "not only tensors and plain data; contsup never loads such a file (see docs/security.md)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_BOILERPLATE)]
    reason = lines[0].split(". ")[0][:200] if lines else type(err).__name__
    return f"cannot read checkpoint {path}: {reason}"


def check_archive(path: Path) -> None:
    """Refuse, before torch.load reads it, a file that is not a bounded, uncompressed torch zip archive."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise ContsupError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ContsupError(f"checkpoint {path} is not a regular file")
    if info.st_size > MAX_BYTES:
        raise ContsupError(f"checkpoint {path} is {info.st_size} bytes, more than the {MAX_BYTES} contsup reads")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ContsupError(f"{path} is not a contsup checkpoint (not a torch zip archive: {err})") from None
    declared = sum(e.file_size for e in entries)
    if len(entries) > MAX_ENTRIES or any(e.compress_type != zipfile.ZIP_STORED for e in entries) \
            or declared > info.st_size:
        raise ContsupError(f"refusing {path}: its zip entries are compressed, too many or declare {declared} bytes "
                           f"in a file of {info.st_size}; torch.save writes none of that (see docs/security.md)")


def check_values(payload: Any, path: Path) -> None:
    """Every value plain data or a dense CPU tensor of a real dtype, nested at most MAX_DEPTH deep."""
    todo: list[tuple[Any, int]] = [(payload, 0)]
    seen = 0
    while todo:
        value, depth = todo.pop()
        seen += 1
        if depth > MAX_DEPTH or seen > MAX_NODES:
            raise ContsupError(f"{path}: malformed checkpoint (nested deeper than {MAX_DEPTH} or more than "
                               f"{MAX_NODES} values)")
        if isinstance(value, torch.Tensor):
            real = value.is_floating_point() or value.dtype == torch.int64  # int64: BatchNorm's step count
            if value.layout != torch.strided or value.is_meta or value.device.type != "cpu" or not real \
                    or value.is_quantized or value.is_nested:
                raise ContsupError(f"{path}: malformed checkpoint (a tensor that is sparse, meta, not on the CPU "
                                   f"or of dtype {value.dtype}; contsup writes dense float tensors)")
        elif isinstance(value, dict):
            todo += [(k, depth + 1) for k in value] + [(v, depth + 1) for v in value.values()]
        elif isinstance(value, (list, tuple)):
            todo += [(v, depth + 1) for v in value]
        elif not isinstance(value, (str, int, float, bool, type(None))):
            raise ContsupError(f"{path}: malformed checkpoint (a value of type {type(value).__name__})")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a contsup checkpoint; a missing, corrupt, damaged, foreign or code-carrying file raises ContsupError."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not os.path.lexists(path):
        raise ContsupError(f"no checkpoint at {path}")
    check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to parse the file is the file's fault
        raise ContsupError(_refusal(path, err)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ContsupError(f"{path} is not a contsup checkpoint")
    if payload.get("version") == 2:
        raise ContsupError(f"{path} was written by an older contsup (checkpoint version 2, optimizer state by "
                           f"index); this contsup reads version {VERSION}: retrain, or evaluate it with contsup 0.1")
    if payload.get("version") != VERSION:
        raise ContsupError(f"{path} has checkpoint version {payload.get('version')!r}; this contsup reads {VERSION}")
    check_values(payload, path)
    for key, kind in FIELDS.items():
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise ContsupError(f"{path}: malformed checkpoint ({key!r} missing or of the wrong type)")
    model = payload["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise ContsupError(f"{path}: malformed checkpoint ('model' must map names to tensors)")
    if tensor_digest(model) != payload["model_sha256"]:
        raise ContsupError(f"{path} is damaged: its weights do not match their sha256 digest")
    if payload["epoch"] < 0 or payload["images"] < 0 or not 0 <= payload["train_time"] < math.inf:
        raise ContsupError(f"{path}: malformed checkpoint (negative epoch or image count, or a time that is "
                           "negative or not finite)")
    return _to(payload, torch.device(map_location))


def _to(value: Any, device: torch.device) -> Any:
    """The checked payload with its tensors moved to `device` (they are read onto the CPU and checked there)."""
    if device.type == "cpu":
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value
