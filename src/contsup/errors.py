"""The one exception type that the command line turns into a clean error line, and the checks that raise it."""

from __future__ import annotations

import math
from typing import Any


class ContsupError(Exception):
    """A user-facing error (bad input, missing data, foreign checkpoint): the CLI prints it, exits 2."""


def _bad(name: str, value: Any, rule: str) -> ContsupError:
    return ContsupError(f"{name} must be {rule}, got {value!r}")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """An int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise _bad(name, value, f"an integer >= {low}" + (f" and <= {high}" if high is not None else ""))


def check_float(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False,
                high_open: bool = False) -> None:
    """A finite real number in the interval from low to high (open where asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        rule = f"a finite number {'>' if low_open else '>='} {low:g}"
        if math.isfinite(high):
            rule += f" and {'<' if high_open else '<='} {high:g}"
        raise _bad(name, value, rule)


def check_type(name: str, value: Any, kind: type | tuple[type, ...]) -> None:
    """`value` is an instance of `kind` (a bool is not an int)."""
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                                                 else (kind,))):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise _bad(name, value, f"of type {names}")
