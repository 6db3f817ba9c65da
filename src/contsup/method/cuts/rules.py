"""Where to cut a chain of units into K modules: the paper's tables, an equal rule, explicit lists.

A cut is given as the index of the unit it follows (cut after unit i). The paper names cuts as
(stage, block): stage 0 block 0 is the stem; stage s >= 1, block b is the b-th block of stage s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from contsup.errors import ContsupError

Named = tuple[int, int]

# The paper's cut lists (docs/method.md, networks and where to cut). Keys: (arch, K). "equal" holds the
# equal-layer tables; the memory-balanced tables are keyed by the dataset they were made for
# (ResNet-32/110 on CIFAR-10, ResNet-110 on STL-10).
_R32_K16: list[Named] = [(0, 0)] + [(s, b) for s in (1, 2, 3) for b in range(5)][:14]
PAPER_CUTS: dict[str, dict[tuple[str, int], list[Named]]] = {
    "equal": {
        ("resnet32", 2): [(2, 1)],
        ("resnet32", 3): [(1, 4), (2, 4)],
        ("resnet32", 4): [(1, 2), (2, 1), (3, 0)],
        ("resnet32", 8): [(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)],
        ("resnet32", 16): _R32_K16,
        ("resnet110", 2): [(2, 8)],
        ("resnet110", 3): [(1, 17), (2, 17)],
        ("resnet110", 4): [(1, 11), (2, 7), (3, 3)],
        ("resnet110", 8): [(1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10)],
        ("resnet110", 16): [(1, 1), (1, 4), (1, 7), (1, 10), (1, 13), (1, 16), (2, 1), (2, 4),
                            (2, 7), (2, 11), (2, 15), (3, 1), (3, 5), (3, 9), (3, 13)],
    },
    "balanced-cifar10": {
        ("resnet32", 2): [(1, 3)],
        ("resnet32", 4): [(1, 2), (1, 4), (2, 2)],
        ("resnet32", 8): [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2)],
        ("resnet32", 16): _R32_K16,
        ("resnet110", 2): [(1, 14)],
        ("resnet110", 3): [(1, 9), (2, 2)],
        ("resnet110", 4): [(1, 6), (1, 14), (2, 8)],
    },
    "balanced-stl10": {
        ("resnet110", 2): [(1, 14)],
        ("resnet110", 3): [(1, 8), (2, 1)],
        ("resnet110", 4): [(1, 6), (1, 14), (2, 8)],
    },
}
TABLES = ["auto", "equal-units", "balanced", *PAPER_CUTS]

# (per-unit bytes, bytes charged to a module ending at unit j, bytes charged to a module starting at unit i)
MemoryModel = tuple[Sequence[float], Sequence[float], Sequence[float]]


def balanced_cuts(
    unit_bytes: Sequence[float],
    modules: int,
    end_bytes: Sequence[float] | None = None,
    start_bytes: Sequence[float] | None = None,
) -> list[int]:
    """K-1 cuts minimising the memory of the largest module (exact, by dynamic programming).

    A module of units i..j costs sum(unit_bytes[i..j]) + end_bytes[j] (its local head, or the
    classifier when j is the last unit; infinite where no head can sit) + start_bytes[i] (the context
    encoders in front of it).
    Ties go to the partition with the smaller total, then to the earlier cuts.
    """
    n = len(unit_bytes)
    check_modules(n, modules)
    end = list(end_bytes) if end_bytes is not None else [0.0] * n
    start = list(start_bytes) if start_bytes is not None else [0.0] * n
    if len(end) != n or len(start) != n:
        raise ValueError("end_bytes and start_bytes need one entry per unit")
    prefix = [0.0]
    for b in unit_bytes:
        prefix.append(prefix[-1] + b)

    def cost(i: int, j: int) -> float:
        return prefix[j + 1] - prefix[i] + end[j] + start[i]

    inf = (float("inf"), float("inf"))
    # best[k][j]: (max, total) for units 0..j in k+1 modules; back[k][j]: first unit of the last module
    best = [[inf] * n for _ in range(modules)]
    back = [[0] * n for _ in range(modules)]
    for j in range(n):
        best[0][j] = (cost(0, j), cost(0, j))
    for k in range(1, modules):
        for j in range(k, n):
            for i in range(k, j + 1):
                prev = best[k - 1][i - 1]
                c = cost(i, j)
                cand = (max(prev[0], c), prev[1] + c)
                if cand < best[k][j]:
                    best[k][j], back[k][j] = cand, i
    if best[modules - 1][n - 1][0] == float("inf"):
        raise ContsupError(f"no {modules} modules leave every local head a cut where it can sit (head settings)")
    cuts, j = [], n - 1
    for k in range(modules - 1, 0, -1):
        i = back[k][j]
        cuts.append(i - 1)
        j = i - 1
    return sorted(cuts)


def equal_cuts(num_units: int, modules: int) -> list[int]:
    """K-1 cuts that split `num_units` units into K groups of (nearly) equal unit count."""
    check_modules(num_units, modules)
    bounds = [round(num_units * k / modules) for k in range(1, modules)]
    return [b - 1 for b in bounds]


def check_modules(num_units: int, modules: int) -> None:
    """K must be between 1 and the number of units."""
    if not 1 <= modules <= num_units:
        raise ContsupError(f"--modules must be between 1 and the number of units ({num_units}), got {modules}")


def from_named(named: Sequence[Named], unit_names: Sequence[Named]) -> list[int]:
    """Translate (stage, block) cut names into unit indices for a backbone's unit names."""
    index = {name: i for i, name in enumerate(unit_names)}
    try:
        return [index[tuple(n)] for n in named]
    except KeyError as err:
        raise ContsupError(f"cut {err.args[0]} names no unit of this network") from None


def validate_cuts(cuts: Sequence[int], num_units: int) -> list[int]:
    """Cuts must be strictly increasing unit indices, each leaving at least one unit after it."""
    cuts = list(cuts)
    for c in cuts:
        if not 0 <= c <= num_units - 2:
            raise ContsupError(
                f"cut after unit {c} is out of range: cuts must lie in 0..{num_units - 2} "
                f"for a chain of {num_units} units"
            )
    if any(b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
        raise ContsupError(f"cuts must be strictly increasing, got {cuts}")
    return cuts


def parse_cut_list(text: str) -> list[Named] | list[int]:
    """Parse `--cuts`: unit indices "3,7,11" or (stage, block) pairs "1.2,2.1,3.0"."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        if any("." in t for t in items):
            return [tuple(int(p) for p in t.split(".", 1)) for t in items]  # type: ignore[misc]
        return [int(t) for t in items]
    except ValueError:
        raise ContsupError(
            f"cannot read --cuts {text!r}: give unit indices (3,7,11) or stage.block pairs (1.2,2.1)"
        ) from None


def resolve_cuts(
    arch: str,
    unit_names: Sequence[Named],
    modules: int,
    table: str = "auto",
    explicit: Sequence[int] | Sequence[Named] | None = None,
    memory: Callable[[], MemoryModel] | None = None,
) -> list[int]:
    """The K-1 cut indices for a network: an explicit list, a paper table, the equal-units or balanced rule.

    `table="auto"` takes the paper's equal-layer table where it covers (arch, K), else equal units.
    `table="balanced"` calls `memory()` for the per-unit memory model and balances it (`balanced_cuts`).
    """
    num_units = len(unit_names)
    check_modules(num_units, modules)
    if explicit is not None:
        cuts = list(explicit)
        if cuts and isinstance(cuts[0], tuple):
            cuts = from_named(cuts, unit_names)  # type: ignore[arg-type]
        if len(cuts) != modules - 1:
            raise ContsupError(f"--modules {modules} needs {modules - 1} cuts, got {len(cuts)}")
        return validate_cuts(cuts, num_units)  # type: ignore[arg-type]
    if table == "equal-units":
        return equal_cuts(num_units, modules)
    if table == "balanced":
        if memory is None:
            raise ContsupError("the balanced cut rule needs the network's memory model")
        unit_bytes, end_bytes, start_bytes = memory()
        return balanced_cuts(unit_bytes, modules, end_bytes, start_bytes)
    if table == "auto":
        named = PAPER_CUTS["equal"].get((arch, modules))
        return from_named(named, unit_names) if named else equal_cuts(num_units, modules)
    if table not in PAPER_CUTS:
        raise ContsupError(f"unknown cut table {table!r}; choose from {', '.join(TABLES)}")
    named = PAPER_CUTS[table].get((arch, modules))
    if named is None:
        have = sorted(f"{a} K={k}" for a, k in PAPER_CUTS[table])
        raise ContsupError(f"cut table {table!r} has no entry for {arch} K={modules}; it has {', '.join(have)}")
    return validate_cuts(from_named(named, unit_names), num_units)
