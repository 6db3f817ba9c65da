import pytest
import torch
from tests.conftest import plain_head

from contsup.errors import ContsupError
from contsup.method.heads.man import MomentumHead
from contsup.models import build_arch, probe_shapes


def backbone_and_shapes(arch: str) -> tuple[torch.nn.Module, list[int], list[int]]:
    """A registered backbone with its units' output channels and heights on 32 x 32 inputs."""
    torch.manual_seed(0)
    backbone = build_arch(arch, 3, 10)
    shapes = probe_shapes(list(backbone.units), torch.zeros(1, 3, 32, 32))
    return backbone, [s.channels for s in shapes], [s.height for s in shapes]


def man_head(backbone: torch.nn.Module, C: list[int], l: int, ema_start: str = "paper") -> MomentumHead:
    """MAN head of the cut after unit l: a 1c2f head over the output of nxt = unit l + 1."""
    return MomentumHead(plain_head(C[l + 1], "1c2f"), backbone.units[l + 1], ema_start)


def block_params(a: int, b: int) -> int:
    """BasicBlock(a -> b) parameters; on the CIFAR ResNet the shortcut is a 1x1 conv + BN exactly when a != b."""
    shortcut = a * b + 2 * b if a != b else 0
    return 9 * a * b + 9 * b * b + 4 * b + shortcut


def head_1c2f_params(c: int, classes: int = 10, width: int = 128) -> int:
    """1c2f: conv3x3 c -> 2c below 64 channels (else c -> c) + BN, then Linear(., 128), Linear(128, classes)."""
    out = 2 * c if c < 64 else c
    return 9 * c * out + 2 * out + out * width + width + width * classes + classes


def count(params) -> int:
    return sum(p.numel() for p in params)


def test_resnet32_parameter_counts():
    backbone, C, _ = backbone_and_shapes("resnet32")
    for l in range(15):
        head = man_head(backbone, C, l)
        copy_params = block_params(C[l], C[l + 1])
        assert count(head.parameters()) == 2 * copy_params + head_1c2f_params(C[l + 1])
        assert count(p for p in head.parameters() if p.requires_grad) == copy_params + head_1c2f_params(C[l + 1])
        assert all(m is not backbone.units[l + 1] for m in head.modules())
        assert all(k.split(".")[0] in ("head", "lb", "ema") for k in head.state_dict())


def test_starts():
    backbone, C, _ = backbone_and_shapes("resnet32")
    nxt = backbone.units[6]
    paper = man_head(backbone, C, 5)
    for a, b in zip(paper.ema.state_dict().values(), nxt.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    lb_conv, nxt_conv = paper.lb.conv1.weight, nxt.conv1.weight
    assert lb_conv.shape == nxt_conv.shape and not torch.equal(lb_conv, nxt_conv)
    random = man_head(backbone, C, 5, "random")
    assert not torch.equal(random.ema.conv1.weight, nxt.conv1.weight)
    assert not torch.equal(random.ema.conv1.weight, random.lb.conv1.weight)
    with pytest.raises(ContsupError):
        man_head(backbone, C, 5, "zero")


def test_gradient_reaches_only_head_lb_and_h():
    backbone, C, H = backbone_and_shapes("resnet32")
    head = man_head(backbone, C, 5)
    h = torch.randn(4, C[5], H[5], H[5], requires_grad=True)
    torch.nn.functional.cross_entropy(head(h), torch.arange(4)).backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert all(p.grad is not None for p in [*head.head.parameters(), *head.lb.parameters()])
    assert all(p.grad is None and not p.requires_grad for p in head.ema.parameters())
    assert all(p.grad is None for p in backbone.parameters())


def test_ema_moves_by_the_momentum_rule_after_a_step():
    backbone, C, H = backbone_and_shapes("resnet32")
    nxt = backbone.units[6]
    head = man_head(backbone, C, 5, "random")
    head(torch.randn(4, C[5], H[5], H[5]))  # train mode: the copy's BN updates its own running statistics
    opt = torch.optim.SGD(nxt.parameters(), lr=0.5)
    nxt(torch.randn(4, C[5], H[5], H[5])).square().mean().backward()
    before_nxt = [p.detach().clone() for p in nxt.parameters()]
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before_nxt, nxt.parameters(), strict=True))
    ema0 = [p.detach().clone() for p in head.ema.parameters()]
    buffers0 = [b.clone() for b in head.ema.buffers()]
    head.ema_update(0.9)
    for e0, n1, e1 in zip(ema0, nxt.parameters(), head.ema.parameters(), strict=True):
        torch.testing.assert_close(e1, 0.9 * e0 + 0.1 * n1.detach(), rtol=1e-6, atol=1e-7)
    for b0, b1 in zip(buffers0, head.ema.buffers(), strict=True):
        assert torch.equal(b0, b1)
    assert not torch.equal(head.ema.bn1.running_mean, nxt.bn1.running_mean)


def test_momentum_extremes():
    backbone, C, _ = backbone_and_shapes("resnet32")
    nxt = backbone.units[3]
    head = man_head(backbone, C, 2, "random")
    ema0 = [p.clone() for p in head.ema.parameters()]
    head.ema_update(1.0)
    assert all(torch.equal(a, b) for a, b in zip(ema0, head.ema.parameters(), strict=True))
    head.ema_update(0.0)
    assert all(torch.equal(a, b) for a, b in zip(nxt.parameters(), head.ema.parameters(), strict=True))
    with pytest.raises(ContsupError):
        head.ema_update(1.5)


@pytest.mark.parametrize("arch", ["resnet32", "resnet18"])
def test_forward_shapes(arch):
    backbone, C, H = backbone_and_shapes(arch)
    for l in range(len(C) - 1):
        assert man_head(backbone, C, l)(torch.randn(2, C[l], H[l], H[l])).shape == (2, 10)


@pytest.mark.parametrize("context", ["R0", "R1E"])
def test_man_in_front_of_auglocal_heads(context):
    """MAN's copies of the next unit, then an AugLocal head modelled on the units after that one (none after
    the last): every cut's objective runs, and a local step trains."""
    from contsup.config import LocalConfig
    from contsup.method import LocalNetwork, local_step

    torch.manual_seed(0)
    net = LocalNetwork(build_arch("resnet32", 3, 10), LocalConfig(modules=16, context=context, head="auglocal",
                                                                  man_momentum=0.9), torch.zeros(1, 3, 16, 16))
    out = local_step(net, torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)))
    assert out.losses.shape == (16,) and torch.isfinite(out.losses).all()
    from contsup.method.heads.auglocal import aux_depths, sample_units

    depths = aux_depths(2, 15, 0.5)
    for k, cut in enumerate(net.cuts):  # the head reads unit cut + 1's output: it copies the units after that one
        assert net.objectives[k].head.head.units == sample_units(cut + 1, 16, depths[k])
    assert net.objectives[14].head.head.units == []


def test_ema_copy_follows_the_next_unit_through_fit():
    """Under `Trainer.fit`, after every optimizer step the EMA copy moves by the momentum rule towards the unit
    after the cut as that step left it (recorded by a hook on the optimizer's step), and only then."""
    from contsup.config import RunConfig
    from contsup.run import build_network, load_data, make_trainer

    cfg = RunConfig.from_dict({
        "data": {"name": "synthetic", "train_subset": 96}, "arch": "resnet8",
        "local": {"modules": 2, "context": "R0", "man_momentum": 0.8, "man_ema_start": "random", "cuts": "1"},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "device": "cpu", "progress": False},
    })
    data = load_data(cfg)
    net = build_network(cfg, data.info.channels, data.info.num_classes, data.info.size)
    trainer = make_trainer(cfg, data, net)
    man = trainer.net.objectives[0].head
    expected = [p.detach().clone() for p in man.ema.parameters()]
    steps = []

    def follow(*_):
        steps.append(1)
        for e, n in zip(expected, man.nxt.parameters(), strict=True):
            e.mul_(0.8).add_(n.detach(), alpha=0.2)

    trainer.optimizer.register_step_post_hook(follow)
    start = [p.detach().clone() for p in man.ema.parameters()]
    trainer.fit()
    assert len(steps) == 6  # 3 batches a epoch, 2 epochs
    assert man.nxt is trainer.net.blocks[1][0]
    for e, actual, s in zip(expected, man.ema.parameters(), start, strict=True):
        torch.testing.assert_close(actual, e, rtol=1e-6, atol=1e-7)
        assert not torch.equal(actual, s)
