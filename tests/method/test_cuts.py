import pytest

from contsup.errors import ContsupError
from contsup.method.cuts import PAPER_CUTS, equal_cuts, parse_cut_list, resolve_cuts
from contsup.models import resnet

R32 = resnet(32).unit_names
R110 = resnet(110).unit_names


def idx(stage: int, block: int, n: int) -> int:
    """Unit index of (stage, block) in ResNet-(6n+2), written out independently of the library."""
    return 0 if stage == 0 else 1 + (stage - 1) * n + block


# The paper's cut lists (docs/method.md), copied from the text, as (stage, block) pairs.
SPEC = {
    ("equal", "resnet32", 2): "2,1",
    ("equal", "resnet32", 3): "1,4 2,4",
    ("equal", "resnet32", 4): "1,2 2,1 3,0",
    ("equal", "resnet32", 8): "1,0 1,2 1,4 2,1 2,3 3,0 3,2",
    ("equal", "resnet32", 16): "0,0 1,0 1,1 1,2 1,3 1,4 2,0 2,1 2,2 2,3 2,4 3,0 3,1 3,2 3,3",
    ("equal", "resnet110", 2): "2,8",
    ("equal", "resnet110", 3): "1,17 2,17",
    ("equal", "resnet110", 4): "1,11 2,7 3,3",
    ("equal", "resnet110", 8): "1,4 1,11 2,0 2,7 2,14 3,3 3,10",
    ("equal", "resnet110", 16): "1,1 1,4 1,7 1,10 1,13 1,16 2,1 2,4 2,7 2,11 2,15 3,1 3,5 3,9 3,13",
    ("balanced-cifar10", "resnet32", 2): "1,3",
    ("balanced-cifar10", "resnet32", 4): "1,2 1,4 2,2",
    ("balanced-cifar10", "resnet32", 8): "1,1 1,2 1,3 2,1 2,2 3,1 3,2",
    ("balanced-cifar10", "resnet32", 16): "0,0 1,0 1,1 1,2 1,3 1,4 2,0 2,1 2,2 2,3 2,4 3,0 3,1 3,2 3,3",
    ("balanced-cifar10", "resnet110", 2): "1,14",
    ("balanced-cifar10", "resnet110", 3): "1,9 2,2",
    ("balanced-cifar10", "resnet110", 4): "1,6 1,14 2,8",
    ("balanced-stl10", "resnet110", 2): "1,14",
    ("balanced-stl10", "resnet110", 3): "1,8 2,1",
    ("balanced-stl10", "resnet110", 4): "1,6 1,14 2,8",
}


@pytest.mark.parametrize("key", sorted(SPEC))
def test_paper_tables_exact(key):
    table, arch, k = key
    names, n = (R32, 5) if arch == "resnet32" else (R110, 18)
    pairs = [tuple(int(v) for v in p.split(",")) for p in SPEC[key].split()]
    expected = [idx(s, b, n) for s, b in pairs]
    assert resolve_cuts(arch, names, k, table) == expected
    assert len(expected) == k - 1


def test_every_table_entry_is_in_the_spec():
    assert {(t, a, k) for t, d in PAPER_CUTS.items() for (a, k) in d} == set(SPEC)


def test_auto_uses_paper_then_equal_units():
    assert resolve_cuts("resnet32", R32, 4) == [3, 7, 11]
    assert resolve_cuts("resnet32", R32, 5) == equal_cuts(16, 5)
    assert resolve_cuts("resnet32", R32, 1) == []


@pytest.mark.parametrize("units,k", [(16, 16), (16, 5), (10, 3), (55, 7)])
def test_equal_units_rule(units, k):
    cuts = equal_cuts(units, k)
    sizes = [b - a for a, b in zip([-1, *cuts], [*cuts, units - 1], strict=False)]
    assert len(cuts) == k - 1 and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_explicit_cuts():
    assert resolve_cuts("resnet32", R32, 3, explicit=[2, 9]) == [2, 9]
    assert resolve_cuts("resnet32", R32, 3, explicit=parse_cut_list("1.2,3.0")) == [3, 11]


@pytest.mark.parametrize("k,explicit,table", [
    (17, None, "auto"),  # more modules than units
    (0, None, "auto"),
    (3, [9, 2], "auto"),  # unsorted
    (3, [2, 15], "auto"),  # out of range (last unit)
    (3, [2], "auto"),  # wrong count
    (3, None, "balanced-stl10"),  # no entry
    (3, [(4, 0), (1, 1)], "auto"),  # no such unit
])
def test_bad_cuts(k, explicit, table):
    with pytest.raises(ContsupError):
        resolve_cuts("resnet32", R32, k, table, explicit)


def test_parse_cut_list_error():
    with pytest.raises(ContsupError):
        parse_cut_list("a,b")
