import copy

import pytest
import torch
from torch import nn

from contsup.method import LocalConfig, LocalNetwork
from contsup.models import Backbone, Classifier
from contsup.profile.bound import lower_bound, module_bytes

F32 = 4


def tiny(modules: int, cuts: list[int]) -> LocalNetwork:
    """Three conv units on 1x8x8 images, a 0c1f head: every saved tensor can be counted by hand."""
    units = [
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1, bias=False), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.ReLU()),
    ]
    config = LocalConfig(modules=modules, context="R0", head="0c1f", cuts=",".join(f"0.{c}" for c in cuts) or None)
    return LocalNetwork(Backbone(units, Classifier(8, 10)), config, torch.zeros(1, 1, 8, 8))


# Saved for backward, per sample (float32; parameters are not activations):
UNIT0 = 1 * 8 * 8 * F32  # conv: its input x
UNIT1 = 4 * 8 * 8 * F32 + 8 * 4 * 4 * F32  # conv: unit 0's output; ReLU: its output
UNIT2 = 8 * 4 * 4 * F32  # conv: unit 1's output, already counted; ReLU: its output
# Head 0c1f or classifier on 8x4x4: the mean saves nothing, the linear its pooled input (8), cross entropy
# its log-softmax (10 logits) and the int64 label; nll's scalar total weight (4 bytes) is counted per batch
# of two in the model: 2 bytes a sample.
END = 8 * F32 + 10 * F32 + 8 + 2
PARAMS = (1 * 4 * 9 + 4 * 8 * 9 + 8 * 8 * 9 + 8 * 10 + 10) * F32  # units and classifier
HEAD = (8 * 10 + 10) * F32  # the local head's linear


@pytest.mark.quick
def test_lower_bound_of_a_hand_checked_network():
    bound = lower_bound(tiny(2, [1]), batch_size=4)  # module 0: units 0, 1 and the head; module 1: unit 2
    assert bound.module == 0
    assert bound.activations == 4 * (UNIT0 + UNIT1 + END) == 7496
    assert bound.params == bound.grads == bound.optimizer == PARAMS + HEAD == 4320
    assert bound.buffers == 0
    assert bound.total == 7496 + 3 * 4320
    assert lower_bound(tiny(2, [1]), batch_size=4, optimizer_buffers=2).total == 7496 + 4 * 4320  # e.g. Adam


def test_end_to_end_bound_is_the_whole_network():
    bound = lower_bound(tiny(1, []), batch_size=3)
    assert bound.module == 0 and bound.activations == 3 * (UNIT0 + UNIT1 + UNIT2 + END)
    assert bound.params == PARAMS


def relu_units() -> list[nn.Module]:
    """Three conv-ReLU units of 4 channels on 1x8x8 images: each saves its input and its output."""
    return [nn.Sequential(nn.Conv2d(c, 4, 3, padding=1, bias=False), nn.ReLU()) for c in (1, 4, 4)]


MAP = 4 * 8 * 8 * F32  # a unit's output
END4 = 4 * F32 + 10 * F32 + 8 + 2  # 0c1f head or classifier on 4x8x8 (as END)


@pytest.mark.parametrize(("context", "sizes"), [
    ("R0", [1 * 8 * 8 * F32 + MAP + END4, 2 * MAP + END4, 2 * MAP + END4]),
    # cut 1's lean R1 encoder keeps s_1 for its weight gradient; cut 0's reads x, which lives before the step
    ("R1", [1 * 8 * 8 * F32 + MAP + END4, 2 * MAP + END4, 3 * MAP + END4]),
    ("R1E", [1 * 8 * 8 * F32 + MAP + END4, 2 * MAP + END4, 3 * MAP + END4]),
])
def test_a_module_counts_its_input_and_the_sources_its_encoders_hold(context, sizes):
    """Module k > 0 saves its input s_k (its first convolution's), and R1's encoder in front of it s_{k-1}: with one
    unit a module these are two of its five maps (docs/benchmarks.md, ResNet-110 at fine cuts)."""
    torch.manual_seed(0)
    config = LocalConfig(modules=3, context=context, head="0c1f", cuts="0.0,0.1")
    net = LocalNetwork(Backbone(relu_units(), Classifier(4, 10)), config, torch.zeros(1, 1, 8, 8))
    bound = lower_bound(net, 2)
    assert (bound.module, bound.activations) == (max(range(3), key=sizes.__getitem__), 2 * max(sizes))


@pytest.mark.parametrize("local", [{"head": "auglocal"}, {"man_momentum": 0.9}, {"head_patches": 2}])
def test_end_to_end_bound_does_not_depend_on_the_head_settings(local):
    """K = 1 has no local heads: every head setting gives plain E2E's bound (the model still builds them)."""
    from contsup.models import build_arch

    def bound(**kw):
        torch.manual_seed(0)
        net = LocalNetwork(build_arch("resnet8", 3, 10), LocalConfig(modules=1, **kw), torch.zeros(1, 3, 16, 16))
        return lower_bound(net, 4)

    assert bound(**local) == bound()


def test_token_backbones_with_image_context_have_a_memory_model():
    """The memory model builds the token encoders (the image's with the backbone's patch); cuts and bound read it."""
    from contsup.method.cuts.balance import memory_model
    from contsup.method.cuts.rules import balanced_cuts
    from contsup.models import build_arch

    torch.manual_seed(0)
    config = LocalConfig(modules=3, context="R1E", head="meantoken", cut_table="balanced")
    net = LocalNetwork(build_arch("vit-mini-p8", 1, 10, 16), config, torch.zeros(1, 1, 16, 16))
    units = [u for block in net.blocks for u in block]
    unit_bytes, end_bytes, start_bytes = memory_model(
        units, net.classifier, torch.zeros(1, 1, 16, 16), net.unit_shapes, net.mode,
        lambda j: net.new_objective(j, 0, None))
    assert start_bytes[0] == 0 and all(b > 0 for b in start_bytes[1:])  # the token encoders in front
    assert net.cuts == balanced_cuts(unit_bytes, 3, end_bytes, start_bytes)
    bounds = [0, *(c + 1 for c in net.cuts), len(units)]
    sizes = module_bytes(copy.deepcopy(net), end_bytes)
    for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        units_and_head = sum(unit_bytes[a:b]) + end_bytes[b - 1]  # a block's LayerNorm keeps its input in both
        # module 1's encoders read x alone (held before the step); module 2's also s_1, which they keep
        held = net.source_shapes[1].numel() * F32 if k == 2 else 0
        assert sizes[k] >= units_and_head + held and (k < 2 or sizes[k] > units_and_head + held)
    bound = lower_bound(net, 4)
    assert (bound.module, bound.activations) == (max(range(3), key=sizes.__getitem__), round(4 * max(sizes)))


def test_man_copies_are_held_as_weights_alone():
    """MAN's EMA copy of the next unit has no gradient and no optimizer state: the bound counts its weights once."""
    torch.manual_seed(0)
    units = [
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1, bias=False), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.ReLU()),
    ]
    config = LocalConfig(modules=2, context="R0", head="0c1f", cuts="0.1", man_momentum=0.9)
    net = LocalNetwork(Backbone(units, Classifier(8, 10)), config, torch.zeros(1, 1, 8, 8))
    copy = 8 * 8 * 9  # unit 2's conv: the trained copy LB and the frozen copy EMA have this many each
    bound = lower_bound(net, 4)
    assert bound.params == PARAMS + HEAD + 2 * copy * F32
    assert bound.grads == bound.optimizer == PARAMS + HEAD + copy * F32
    counts = net.param_counts()
    assert counts["frozen"] == copy and counts["heads"] == HEAD // F32 + copy
    assert counts["total"] == sum(p.numel() for p in net.parameters())
