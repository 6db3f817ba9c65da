import pytest
import torch
from torch import nn

from contsup.config import LocalConfig
from contsup.errors import ContsupError
from contsup.method import LocalNetwork, local_step
from contsup.method.cuts.balance import memory_model
from contsup.models import BACKBONES, build_arch, resnet_imagenet
from contsup.registry import Registry


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_trains_locally(name):
    """Every registered backbone (feature maps or tokens): cut by the auto rule into K=4, R1E, one local step."""
    torch.manual_seed(0)
    backbone = build_arch(name, 3, 10)
    head = "1c2f" if backbone.units[0](torch.zeros(1, 3, 32, 32)).dim() == 4 else "clstoken"
    net = LocalNetwork(backbone, LocalConfig(modules=4, context="R1E", head=head), torch.zeros(1, 3, 32, 32))
    assert len(net.cuts) == 3 and net.cuts == sorted(net.cuts)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = local_step(net, x, y)
    assert out.losses.shape == (4,) and torch.isfinite(out.losses).all()
    assert out.logits.shape == (4, 10)
    assert all(p.grad is not None for p in net.blocks.parameters())
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (4, 10)


@pytest.mark.parametrize("depth,blocks,params", [(18, 8, 11_181_642), (34, 16, 21_289_802)])
def test_imagenet_resnets(depth, blocks, params):
    """ResNet-18/34 as in torchvision (BasicBlocks, 64-128-256-512, 10 classes): same parameter counts."""
    net = resnet_imagenet(depth, 3, 10)
    assert len(net.units) == blocks + 1 and net.unit_names[-1][0] == 4
    assert sum(p.numel() for p in net.parameters()) == params
    small = resnet_imagenet(depth, 3, 10, small_images=True)
    assert small.units[0](torch.zeros(1, 3, 32, 32)).shape == (1, 64, 32, 32)
    assert net.units[0](torch.zeros(1, 3, 32, 32)).shape == (1, 64, 8, 8)


def test_balanced_rule_cuts_an_imagenet_resnet():
    """On ResNet-18 (a stem with max-pool, four stages) the balanced cuts are the best of every partition under
    the network's own memory model."""
    from tests.method.test_balance import brute_force, cost_of

    torch.manual_seed(0)
    net = LocalNetwork(build_arch("resnet18-small", 3, 10), LocalConfig(modules=3, context="R0", cut_table="balanced"),
                       torch.zeros(1, 3, 32, 32))
    units = [u for block in net.blocks for u in block]
    model = memory_model(units, net.classifier, torch.zeros(1, 3, 32, 32), net.unit_shapes, net.mode,
                         lambda j: net.new_objective(j, 0, None))
    assert cost_of(net.cuts, *model) == brute_force(model[0], 3, model[1], model[2])
    assert net.cuts != [2, 5]  # not the equal-units split: memory sits early, where the maps are largest


def test_registry_names_and_errors():
    reg: Registry = Registry("thing")

    @reg.register("a")
    def a() -> str:
        return "a"

    @reg.register("b2", pattern=r"b(\d+)", help="bN")
    def b(n: str) -> str:
        return f"b{n}"

    assert reg["a"]() == "a" and reg["b7"]() == "b7" and reg.names() == ["a", "b2"]
    with pytest.raises(ContsupError, match="unknown thing 'c'; choose from a, bN"):
        reg["c"]
    with pytest.raises(ValueError):
        reg.register("a")(a)
    assert isinstance(build_arch("ResNet20", 1, 2), nn.Module)
