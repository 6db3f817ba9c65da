import itertools
import random

import pytest
import torch

from contsup.method import LocalConfig, LocalNetwork
from contsup.method.context import parse_mode
from contsup.method.cuts import PAPER_CUTS, balanced_cuts
from contsup.method.cuts.balance import memory_model
from contsup.method.heads import HeadSite
from contsup.method.losses import LOSSES
from contsup.method.objective import local_objective
from contsup.models import probe_shapes, resnet
from contsup.models.chain import Shape


def brute_force(units, modules, end, start):
    """Smallest largest-module cost over every partition, by enumeration."""
    n = len(units)
    best = None
    for cuts in itertools.combinations(range(n - 1), modules - 1):
        bounds = [0, *(c + 1 for c in cuts), n]
        worst = max(sum(units[a:b]) + end[b - 1] + start[a] for a, b in zip(bounds, bounds[1:], strict=False))
        best = worst if best is None else min(best, worst)
    return best


def cost_of(cuts, units, end, start):
    bounds = [0, *(c + 1 for c in cuts), len(units)]
    return max(sum(units[a:b]) + end[b - 1] + start[a] for a, b in zip(bounds, bounds[1:], strict=False))


def test_known_best_cuts_on_a_toy_chain():
    # Two heavy units first: K=2 cuts after them (8 | 6); K=3 isolates the first (4 | 4+1 | 5).
    units = [4, 4, 1, 1, 1, 1, 1, 1]
    assert balanced_cuts(units, 2) == [1]
    assert balanced_cuts(units, 3) == [0, 2]
    # A costly head after unit 2 and costly encoders in front of unit 2 push the cut to unit 3.
    assert balanced_cuts([1] * 6, 2) == [2]
    assert balanced_cuts([1] * 6, 2, end_bytes=[0, 0, 10, 0, 0, 0], start_bytes=[0, 0, 2, 0, 0, 0]) == [3]


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(4, 9)
    units = [rng.randint(1, 20) for _ in range(n)]
    end = [rng.randint(0, 5) for _ in range(n)]
    start = [0] + [rng.randint(0, 5) for _ in range(n - 1)]
    for k in range(1, n + 1):
        cuts = balanced_cuts(units, k, end, start)
        assert len(cuts) == k - 1 and cuts == sorted(set(cuts))
        assert cost_of(cuts, units, end, start) == brute_force(units, k, end, start)


def test_balanced_table_on_resnet32_matches_the_paper_at_k2():
    """With plain GLL (R0) the rule finds the paper's hand-made CIFAR-10 cut for ResNet-32, K=2."""
    config = LocalConfig(modules=2, context="R0", cut_table="balanced")
    net = LocalNetwork(resnet(32), config, torch.zeros(1, 3, 32, 32))
    assert [net.unit_names[c] for c in net.cuts] == PAPER_CUTS["balanced-cifar10"][("resnet32", 2)]
    # Balanced cuts sit earlier than equal ones: early units hold the largest activations.
    equal = LocalNetwork(resnet(32), LocalConfig(modules=2, context="R0"), torch.zeros(1, 3, 32, 32))
    assert net.cuts[0] < equal.cuts[0]


def test_model_counts_lean_encoders_as_their_held_sources():
    net = resnet(20, 3, 10)
    units, sample = list(net.units), torch.zeros(1, 3, 16, 16)
    shapes = probe_shapes(units, sample)
    mode = parse_mode("R1E", 4)
    loss = LOSSES["softmax"](10, 128)

    def objective(j):
        site = HeadSite(0, 3, j, shapes[j], tuple(shapes), Shape.of(sample), 10, LocalConfig(), tuple(units))
        return local_objective(site, "1c2f", loss, None)

    plain = memory_model(units, net.classifier, sample, shapes, mode, objective, lean=False)[2]
    lean = memory_model(units, net.classifier, sample, shapes, mode, objective, lean=True)[2]
    # Lean encoders save nothing but their inputs: what is left is s_1 at the cut's shape, held for them.
    held = [0.0] + [4.0 * s.channels * s.height * s.width for s in shapes[:-1]]
    assert lean == pytest.approx(held)
    assert all(p > h for p, h in zip(plain[1:], held[1:], strict=True))
