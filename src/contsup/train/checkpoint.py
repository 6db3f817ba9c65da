"""Checkpoints: plain data only, written atomically every epoch, checked when read (docs/security.md).

A checkpoint is a dict of tensors, numbers, strings, lists and dicts; it is read with
`torch.load(weights_only=True)`, which refuses anything else instead of running it. The model's
tensors carry a sha256 digest, so a damaged file is reported instead of evaluated.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from contsup.errors import ContsupError
from contsup.files import atomic_write

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
    atomic_write(path, lambda tmp: torch.save(full, tmp))


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a contsup checkpoint; a missing, corrupt, damaged, foreign or code-carrying file raises ContsupError."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ContsupError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to parse the file is the file's fault
        raise ContsupError(_refusal(path, err)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ContsupError(f"{path} is not a contsup checkpoint")
    if payload.get("version") == 2:
        raise ContsupError(f"{path} was written by an older contsup (checkpoint version 2, optimizer state by "
                           f"index); this contsup reads version {VERSION}: retrain, or evaluate it with contsup 0.1")
    if payload.get("version") != VERSION:
        raise ContsupError(f"{path} has checkpoint version {payload.get('version')!r}; this contsup reads {VERSION}")
    for key, kind in FIELDS.items():
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise ContsupError(f"{path}: malformed checkpoint ({key!r} missing or of the wrong type)")
    model = payload["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise ContsupError(f"{path}: malformed checkpoint ('model' must map names to tensors)")
    if tensor_digest(model) != payload["model_sha256"]:
        raise ContsupError(f"{path} is damaged: its weights do not match their sha256 digest")
    if payload["epoch"] < 0 or payload["images"] < 0 or not payload["train_time"] >= 0:
        raise ContsupError(f"{path}: malformed checkpoint (negative epoch, image count or time)")
    return payload
