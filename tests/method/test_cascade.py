"""HPFF's cascade (docs/heads.md): module k's second path crosses exactly one cut, as the authors' loop does.

The proof mirrors `tests/conftest.gradient_leaks`: scaling module j's objective changes module j-1's units'
gradients (every parameter of them) and nothing of module j-2 or earlier; scaling its own head alone changes
nothing before module j. It is parametrised over every head kind and head wrapper like test_isolation.py.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import assert_no_gradient_crosses_a_cut, tiny_net
from tests.method.test_isolation import WRAPPER_ON, network

from contsup.config import LocalConfig
from contsup.errors import ContsupError
from contsup.method import HEAD_WRAPPERS, HEADS, LocalNetwork, local_step, modules_step
from contsup.method.objective import CascadeObjective, NoObjective, Targets
from contsup.method.recon import recon_ratio
from contsup.models import build_arch
from contsup.profile.bound import cascade_window, lower_bound

WY = 0.75  # a second-path weight far from 0 and 1, so both paths' gradients count


def grads(net: LocalNetwork, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """Every parameter's gradient after one local step."""
    net.zero_grad()
    local_step(net, x, y, torch.sigmoid(x) if net.needs_pixels else None)
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in net.named_parameters()}


def changed(net: LocalNetwork, x: torch.Tensor, y: torch.Tensor, base: dict, part: str) -> set[str]:
    """The parameters whose gradients change when the parameters under `part` are scaled by 1.5."""
    other = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name.startswith(part):
                p.mul_(1.5)
    after = grads(other, x, y)
    return {n for n in base if (base[n] is None) != (after[n] is None)
            or (base[n] is not None and not torch.equal(base[n], after[n]))}


def cascade_leaks(net: LocalNetwork, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """What crosses more than the one cut the cascade allows, or what the second path fails to reach."""
    base = grads(net, x, y)
    leaks = []
    for j in range(1, net.num_modules):
        diff = changed(net, x, y, base, f"objectives.{j}.")
        own = (f"blocks.{j}.", f"objectives.{j}.", f"context.{j - 1}.", f"blocks.{j - 1}.")
        leaks += sorted(n for n in diff if not n.startswith(own))
        leaks += [f"{n} untrained by module {j}'s second path" for n in base
                  if n.startswith((f"blocks.{j}.", f"blocks.{j - 1}.")) and n not in diff]
        if isinstance(net.objectives[j], CascadeObjective):  # the own head alone reaches nothing before module j
            diff = changed(net, x, y, base, f"objectives.{j}.own.")
            leaks += sorted(f"{n} (own head {j})" for n in diff if not n.startswith(own[:3]))
    return leaks


@pytest.mark.parametrize("kind", HEADS.names())
def test_every_head_crosses_one_cut(kind):
    net, x, y = network(kind, cascade=WY)
    assert isinstance(net.objectives[0], NoObjective)
    assert not cascade_leaks(net, x, y)


@pytest.mark.parametrize("wrapper", HEAD_WRAPPERS.names())
def test_every_wrapper_crosses_one_cut(wrapper):
    assert not cascade_leaks(*network("1c2f", "R1E", cascade=WY, **WRAPPER_ON[wrapper]))


def test_with_the_patched_decoders_and_context():
    assert not cascade_leaks(*network("2c2f", "R1E", cascade=WY, recon="5,0.5,0,0", recon_schedule="hpff",
                                      recon_patches=2))


def test_the_strict_isolation_proof_catches_the_cascade():
    """The isolation proof (test_isolation.py) holds without the cascade and fails with it, naming module 0."""
    assert_no_gradient_crosses_a_cut(*network("1c2f", "R0"))
    with pytest.raises(AssertionError, match=r"blocks\.0\."):
        assert_no_gradient_crosses_a_cut(*network("1c2f", "R0", cascade=WY))


def test_the_proof_fails_when_the_second_path_stops_at_the_cut(monkeypatch):
    """A second path that detaches module k-1's output (an isolated step) reaches no earlier module: caught."""
    from contsup.method.context.supply import CutContext

    forward = CutContext.forward
    monkeypatch.setattr(CutContext, "forward", lambda self, h, sources, keep_graph=False: forward(self, h, sources))
    assert any("untrained by module" in leak for leak in cascade_leaks(*network("1c2f", "R1E", cascade=WY)))


def official_loop(net: LocalNetwork, x: torch.Tensor, y: torch.Tensor) -> None:
    """HPFF's training forward (Zeudfish/HPFF, resnetInfoPro_HPFF.py, `forward` with local_module_num > 1) typed on
    contsup's parts at R0: module i's net_classifier on x = E_i(x.detach()), its aux heads on z = E_i(E_{i-1}(y)),
    y detached after each module, one backward of wx loss_x + wy loss_y per module; the last module's fc on both."""
    wx, wy = net.cascade
    t = Targets(y)
    h, prev = net.blocks[0](x).detach(), x  # y = the stem's output, undetached: module 0 trains through module 1
    for i in range(1, net.num_modules - 1):
        out = net.blocks[i](h)
        mid = net.blocks[i - 1](prev)
        z = net.blocks[i](mid)
        loss = wx * net.objectives[i].own(out, t)[0] + wy * net.objectives[i].second(z, t)[0]
        loss.backward()
        h, prev = out.detach(), mid.detach()
    out = net.blocks[-1](h)
    z = net.blocks[-1](net.blocks[-2](prev))
    (wx * F.cross_entropy(net.classifier(out), y) + wy * F.cross_entropy(net.classifier(z), y)).backward()


def test_the_step_is_the_official_loop():
    """Same gradients and the same BN running statistics (module i runs three times a step in both)."""
    torch.manual_seed(0)
    net = tiny_net(5, "R0", head="2c2f", cascade=0.999).train()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    theirs = copy.deepcopy(net)
    local_step(net, x, y)
    official_loop(theirs, x, y)
    for (name, a), b in zip(net.named_parameters(), theirs.parameters(), strict=True):
        assert a.grad is not None and torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    for (name, a), b in zip(net.named_buffers(), theirs.buffers(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name


def test_the_module_0_step_keeps_no_graph_and_the_loss_sums_both_paths():
    net = tiny_net(3, "R0", cascade=WY)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    losses = local_step(net, x, y).losses
    assert losses[0] == 0
    with torch.no_grad():
        h0 = net.blocks[0](x)
        h1 = net.blocks[1](h0)
        own = net.objectives[1].own(h1, Targets(y))[0]
        last = F.cross_entropy(net.classifier(net.blocks[2](h1)), y)
    # BN normalises with batch statistics in training: both paths compute the same values
    assert torch.allclose(losses[1], own * (1 - WY) + WY * net.objectives[1].second(h1, Targets(y))[0], atol=1e-5)
    assert torch.allclose(losses[2], last, atol=1e-5)


# HPFF's released run (README: --local_module_num 16): its 15-module table, `ratio = i / (local_module_num - 2)` at
# module i = 1 .. 13 (module 0 has no head; module 14 is the last). Typed from resnetInfoPro_HPFF.py.
OFFICIAL_RATIOS = [i / (16 - 2) for i in range(1, 14)]


def test_the_hpff_schedule_is_the_official_code():
    assert [recon_ratio("hpff", i, 14) for i in range(1, 14)] == OFFICIAL_RATIOS  # its partition: K = 15
    assert recon_ratio("hpff", 14, 15) == 14 / 15  # contsup's K = 16: no local cut takes the last weights
    torch.manual_seed(0)
    config = LocalConfig(modules=15, context="R0", cuts=",".join(str(u) for u in range(1, 15)), head="2c2f",
                         recon="5,0.5,0,0", recon_schedule="hpff", recon_patches=2, cascade=0.999)
    net = LocalNetwork(build_arch("resnet32", 3, 10), config, torch.zeros(1, 3, 32, 32))
    got = [w for o in net.objectives[1:-1] for w in (o.second.lambda_x, o.second.lambda_y)]
    assert got == pytest.approx([w for r in OFFICIAL_RATIOS for w in (5 * (1 - r), 0.5 * (1 - r))])


def block(a: int, b: int) -> int:
    """BasicBlock(a -> b) parameters, a 1x1 conv + BN shortcut when a != b (HPFF's resnetInfoPro_HPFF.py)."""
    return 9 * a * b + 9 * b * b + 4 * b + (a * b + 2 * b if a != b else 0)


def official_2c2f(c: int, classes: int = 10, feature: int = 128) -> int:
    """HPFF's AuxClassifier '2c2f' (auxiliary_net.py), cross entropy: conv c -> 2c (64 -> 64) + BN, conv + BN,
    Linear(., feature), Linear(feature, classes)."""
    out = 2 * c if c < 64 else c
    return 9 * c * out + 2 * out + 9 * out * out + 2 * out + out * feature + feature + feature * classes + classes


def official_patched_decoder(c: int) -> int:
    """HPFF's Decoder: four of (conv c -> 12 with bias, BN(12), conv 12 -> 3 with bias)."""
    return 4 * (9 * c * 12 + 12 + 24 + 9 * 12 * 3 + 3)


def test_parameters_match_the_official_classes_on_their_partition():
    """Per module i = 1 .. 13 the official trains net_classifier + aux_classifier + aux_decoder (hand-counted from
    auxiliary_net.py); contsup's decoders have no conv bias (4 x 15 fewer). Module 0 has no head; the backbone
    (stem, 15 blocks, fc64) is ResNet-32's. `benchmarks/hpff_official.py` counts the classes themselves."""
    torch.manual_seed(0)
    config = LocalConfig(modules=15, context="R0", cuts=",".join(str(u) for u in range(1, 15)), head="2c2f",
                         recon="5,0.5,0,0", recon_schedule="hpff", recon_patches=2, cascade=0.999)
    net = LocalNetwork(build_arch("resnet32", 3, 10), config, torch.zeros(1, 3, 32, 32))
    widths = [16] * 5 + [32] * 5 + [64] * 5  # block i's output channels
    counts = [sum(p.numel() for p in o.parameters()) for o in net.objectives[:-1]]
    assert counts == [0] + [2 * official_2c2f(c) + official_patched_decoder(c) - 60 for c in widths[1:14]]
    backbone = 16 * 27 + 32 + sum(block(a, b) for a, b in zip([16, *widths[:-1]], widths, strict=True)) + 650
    assert sum(p.numel() for p in [*net.blocks.parameters(), *net.classifier.parameters()]) == backbone == 466_906


def test_the_bound_counts_the_two_module_window():
    units, second = [10.0, 20.0, 30.0, 40.0], [0.0, 5.0, 7.0, 3.0]
    assert cascade_window(units, second, [0, 1, 2]) == (3, 30 + 40 + 3)  # windows: 35, 57, 73
    assert cascade_window(units, second, [1]) == (1, 100 + 3)
    net = tiny_net(4, "R0", cascade=WY)
    isolated = tiny_net(4, "R0")
    assert lower_bound(net, 8).activations > lower_bound(isolated, 8).activations


def test_refusals():
    with pytest.raises(ContsupError, match="K >= 2"):
        tiny_net(1, "R0", cascade=WY)
    with pytest.raises(ContsupError, match="balanced cut rule"):
        tiny_net(3, "R0", cascade=WY, cut_table="balanced")
    with pytest.raises(ContsupError, match="cascade"):
        tiny_net(3, "R0", cascade=1.0)
    net = tiny_net(3, "R0", cascade=WY)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    with pytest.raises(ContsupError, match="one process"):  # a pipeline stage that starts after module 0
        modules_step(net, range(1, 3), net.blocks[0](x).detach(), {0: x}, Targets(y))


def test_the_hpff_preset_names_the_cascade_in_its_run_folders(tmp_path):
    from contsup.reproduce.presets import jobs, load_preset

    names = sorted(j.name for j in jobs(load_preset("hpff"), "cpu", tmp_path, seeds=[0]))
    assert names == ["resnet32-fashion-mnist-K16-R0-2c2f-cascade0.999-recon-5_0.5_0_0-by-hpff-patches2-n10000-s0",
                     "resnet32-fashion-mnist-K16-R0-2c2f-recon-5_0.5_0_0-by-hpff-patches2-n10000-s0",
                     "resnet32-fashion-mnist-K16-R0-auglocal-cascade0.999-n10000-s0"]
    isolated = {j.name for j in jobs(load_preset("heads"), "cpu", tmp_path, seeds=[0])}
    assert "resnet32-fashion-mnist-K16-R0-auglocal-n10000-s0" in isolated  # the composition's control, by name


def test_flop_groups_of_the_second_path():
    """Module k-1's recomputation is backbone work, the second path's decoder decoders' (no context at R0)."""
    from contsup.profile.flops import count_flops

    net = tiny_net(3, "R0", cascade=WY, recon="5,0.5,0,0", recon_schedule="hpff")
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    flops = count_flops(net, lambda: local_step(net, x, y, torch.sigmoid(x)))[1]
    assert flops["context"] == 0 and flops["decoders"] > 0 and flops["heads"] > 0
