"""The one checked reader of what a run folder's JSON files hold: summary.json and metrics.jsonl.

`runs`, `reproduce` (sweeps and collect) read these files only through here: a file that is not
UTF-8 JSON of the expected shape (a list, a string, a missing or mistyped field, a negative time)
is refused in one line naming the file, instead of failing later inside a table or a plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from contsup.errors import ContsupError
from contsup.files import JSON_LIMIT, parse_json, read_json, read_text_file

_NUMBER = "number"  # a finite int or float, not a bool
_COUNT = "count"  # an int >= 0, not a bool
# Fields of summary.json: name -> (kind, required).
SUMMARY_FIELDS: dict[str, tuple[Any, bool]] = {
    "epochs": (_COUNT, True), "final_test_error": (_NUMBER, True), "best_test_error_selected_on_test": (_NUMBER, True),
    "best_epoch": (_COUNT, True), "train_time_s": (_NUMBER, True), "images_per_s": (_NUMBER, True),
    "peak_memory_bytes": (_NUMBER, True), "peak_memory_kind": (str, True), "device": (str, True),
    "params": (dict, True), "step_peak_memory_bytes": (_NUMBER, False), "step_peak_memory_kind": (str, False),
    "final_val_error": (_NUMBER, False), "meta": (dict, False),
}
# Fields of one metrics.jsonl row.
ROW_FIELDS: dict[str, tuple[Any, bool]] = {
    "epoch": (_COUNT, True), "test_error": (_NUMBER, True), "train_loss": (_NUMBER, True),
    "local_losses": (list, True), "epoch_time": (_NUMBER, True), "peak_memory_bytes": (_NUMBER, True),
    "train_loss_end": (_NUMBER, False), "local_losses_end": (list, False), "val_error": (_NUMBER, False),
}


def _fits(value: Any, kind: Any) -> bool:
    """Whether one value is of a field's kind (numbers finite and >= 0: errors, times, bytes, losses)."""
    if kind == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if kind == _COUNT:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return isinstance(value, kind)


def check_fields(obj: Any, fields: dict[str, tuple[Any, bool]], where: str, what: str) -> dict[str, Any]:
    """`obj` as a dict whose listed fields are present (when required) and of their kind; else one line."""
    if not isinstance(obj, dict):
        raise ContsupError(f"cannot read {what} {where}: a JSON object was expected, not {type(obj).__name__}")
    for name, (kind, required) in fields.items():
        if (required or name in obj) and not _fits(obj.get(name), kind):
            kind_name = getattr(kind, "__name__", kind)
            state = "missing" if name not in obj else f"{obj[name]!r:.40}, not a valid {kind_name}"
            raise ContsupError(f"cannot read {what} {where}: {name} is {state}")
    return obj


def read_summary(path: str | Path) -> dict[str, Any]:
    """A run's summary.json, every field that runs, sweeps and collect read checked."""
    s = check_fields(read_json(path, "run summary"), SUMMARY_FIELDS, str(path), "run summary")
    if not all(isinstance(s["params"].get(k), int) for k in ("total", "context")):
        raise ContsupError(f"cannot read run summary {path}: params lacks its total or context count")
    run = s.get("meta", {}).get("run")
    if run is not None and not (isinstance(run, dict) and isinstance(run.get("arch"), str)
                                and all(isinstance(run.get(k), dict) for k in ("data", "local", "train"))):
        raise ContsupError(f"cannot read run summary {path}: meta.run is not a run configuration")
    return s


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl: one checked row per finished epoch, epochs 1, 2, ... in order."""
    rows = []
    for i, line in enumerate(read_text_file(path, "metrics file", JSON_LIMIT).splitlines()):
        if not line.strip():
            continue
        row = check_fields(parse_json(line, f"{path} line {i + 1}", "metrics row"), ROW_FIELDS, f"{path} line {i + 1}",
                           "metrics row")
        losses = row["local_losses"] + row.get("local_losses_end", [])
        if not all(_fits(v, _NUMBER) for v in losses) or row["epoch"] != len(rows) + 1:
            raise ContsupError(f"cannot read metrics row {path} line {i + 1}: its losses are not numbers, or its "
                               f"epoch is not {len(rows) + 1}")
        rows.append(row)
    return rows
