"""MAN as its authors' code runs it: the reconstruction weight schedules, the decoder on the copies' output,
MAN++'s scale, and the momentum copy following any optimizer's step."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from contsup.config import LocalConfig
from contsup.errors import ContsupError
from contsup.method import LocalNetwork, local_step
from contsup.method.heads.man import MomentumHead
from contsup.method.objective import Targets
from contsup.models import build_arch, resnet
from contsup.train import Loaders, LocalStep, TrainConfig, Trainer

# ResNet-32, K = 16 (a cut after every unit but the last, MAN++'s partition): the `lo` of MAN++'s code
# (JunhaoSu0/MAN_PlusPlus, networks/resnetInfoPro_MANPP.py), the stage of the unit after each of the 15 cuts,
# units (1, 1) .. (3, 4), and `ratio0 = 0` at its cut after the stem (its `EMA_first`).
NEXT_STAGE = [0] + [1] * 4 + [2] * 5 + [3] * 5


def resnet32_k16(**local) -> LocalNetwork:
    torch.manual_seed(0)
    config = LocalConfig(modules=16, context="R0", cut_table="equal", **local)
    return LocalNetwork(build_arch("resnet32", 3, 10), config, torch.zeros(1, 3, 16, 16))


def weights(net: LocalNetwork) -> list[float]:
    """Each cut's lambda_x, lambda_y, flattened."""
    return [w for o in net.objectives[:-1] for w in (o.lambda_x, o.lambda_y)]


def test_recon_schedules_are_the_official_codes():
    # InfoPro's code (blackfeather-wang/InfoPro-Pytorch, networks/resnet.py): ratio = local_module_i / (K - 2)
    # with local_module_i = 0 .. K - 2; ixx = ixx_1 (1 - ratio) + ixx_2 ratio. Its ResNet-32 K = 16 weights:
    got = weights(resnet32_k16(recon="5,0.05,0.2,0.5"))
    want = [w for i in range(15) for w in (5 * (1 - i / 14) + 0.2 * i / 14, 0.05 * (1 - i / 14) + 0.5 * i / 14)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[:2] == [5, 0.05] and got[-2:] == pytest.approx([0.2, 0.5])
    # MAN's and MAN++'s code: ratio = lo / (K - 2), lo the stage of the unit after the cut; weights 5, 0.5, 0, 0.
    got = weights(resnet32_k16(recon="5,0.5,0,0", recon_schedule="stage"))
    typed = {0: (5, 0.5), 1: (5 * 13 / 14, 0.5 * 13 / 14), 2: (5 * 12 / 14, 0.5 * 12 / 14),
             3: (5 * 11 / 14, 0.5 * 11 / 14)}
    assert got == pytest.approx([w for s in NEXT_STAGE for w in typed[s]], rel=1e-12)


def test_no_module_is_left_without_a_loss():
    with pytest.raises(ContsupError, match="cut 14 of 15 lambda_x = lambda_y = 0.*never train"):
        resnet32_k16(recon="5,0.5,0,0")  # the cut schedule reaches the last weights, (0, 0), at the last cut
    with pytest.raises(ContsupError, match="cut 0 of 15 lambda_x = lambda_y = 0"):
        resnet32_k16(recon="0,0,1,1")
    # MAN's ratio passes 1 when a stage exceeds K - 2 (K = 4: cuts before units of stages 1, 2, 3; ratio 1.5)
    with pytest.raises(ContsupError, match="gives cut 2 negative weights"):
        LocalNetwork(build_arch("resnet32", 3, 10), LocalConfig(modules=4, context="R0", recon="5,0.5,1,1",
                                                                recon_schedule="stage"), torch.zeros(1, 3, 16, 16))
    two = LocalNetwork(build_arch("resnet32", 3, 10), LocalConfig(modules=2, context="R0", recon="5,0.5,0,0"),
                       torch.zeros(1, 3, 16, 16))
    assert weights(two) == [5, 0.5]  # K = 2: the one cut takes the first weights, in both codes


def block(a: int, b: int) -> int:
    """BasicBlock(a -> b) parameters, a 1x1 conv + BN shortcut when a != b (the official resnet.py)."""
    return 9 * a * b + 9 * b * b + 4 * b + (a * b + 2 * b if a != b else 0)


def official_2c2f(c: int, classes: int = 10, feature: int = 128) -> int:
    """InfoPro's AuxClassifier '2c2f' (networks/auxiliary_nets.py), cross entropy: conv c -> 2c (64 -> 64) + BN,
    conv + BN, Linear(., feature), Linear(feature, classes)."""
    out = 2 * c if c < 64 else c
    return 9 * c * out + 2 * out + 9 * out * out + 2 * out + out * feature + feature + feature * classes + classes


def official_decoder(c: int, image_channels: int = 3) -> int:
    """InfoPro's Decoder: conv c -> 12 (with bias) + BN(12), conv 12 -> 3 (with bias)."""
    return 9 * c * 12 + 12 + 24 + 9 * 12 * image_channels + image_channels


def test_man_as_published_decodes_the_copies_output_and_counts_as_the_official_code():
    net = resnet32_k16(head="2c2f", man_momentum=0.995, recon="5,0.5,0,0", recon_schedule="stage")
    C = [s.channels for s in net.unit_shapes]
    for k, cut in enumerate(net.cuts):
        c = C[cut + 1]  # MAN's head and decoder read the next unit's output (decoder_{lo}_{la} in the code)
        objective = net.objectives[k]
        count = sum(p.numel() for p in objective.parameters())
        # LB and EMA copies, the 2c2f head, the decoder; contsup's decoder convs have no bias (12 + 3 fewer).
        assert count == 2 * block(C[cut], c) + official_2c2f(c) + official_decoder(c) - 15
    # The loss decodes a = LB(h) + EMA(h), not h: at the stage boundary (cut 5: unit 5 -> unit 6) the shapes differ.
    objective, man = net.objectives[5], net.objectives[5].task.head
    assert isinstance(man, MomentumHead) and objective.decoder.net[0].in_channels == 32 != C[net.cuts[5]]
    h, y, pixels = torch.randn(4, 16, 16, 16), torch.randint(0, 10, (4,)), torch.rand(4, 3, 16, 16)
    torch.manual_seed(1)
    objective.eval()  # BN in eval mode: the two forward passes below see the same statistics
    loss, _ = objective(h, Targets(y, pixels))
    a = man.copies(h)
    want = objective.lambda_x * objective.decoder.loss(a, pixels) + objective.lambda_y * F.cross_entropy(man.head(a), y)
    torch.testing.assert_close(loss, want)


def small(context: str = "R0", **local) -> LocalNetwork:
    """ResNet-8 (4 units) on 8 x 8 images cut into 3 modules."""
    torch.manual_seed(0)
    return LocalNetwork(resnet(8, 3, 10), LocalConfig(modules=3, context=context, **local), torch.zeros(1, 3, 8, 8))


def test_man_plus_plus_scale():
    net, plain = small(man_momentum=0.995, man_scale=True), small(man_momentum=0.995)
    man, man0 = net.objectives[1].head, plain.objectives[1].head
    assert isinstance(man.scale, torch.nn.Parameter) and man.scale.item() == 1.0 and man0.scale is None
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in plain.parameters()) + 2  # one per cut
    shape = net.unit_shapes[net.cuts[1]]
    h = torch.randn(2, shape.channels, shape.height, shape.width)
    with torch.no_grad():
        man.scale.fill_(1.5)
    torch.testing.assert_close(man.copies(h), 1.5 * man.lb(h) + 0.5 * man.ema(h))
    local_step(net, torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    assert man.scale.grad is not None and man.scale.grad.abs() > 0


def ema_and_next(net: LocalNetwork, k: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    man = net.objectives[k].head
    return [p.detach().clone() for p in man.ema.parameters()], [p.detach().clone() for p in man.nxt.parameters()]


def test_the_copy_follows_a_plain_user_loop():
    net = small(context="R1E", man_momentum=0.9)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(2):
        ema0, _ = ema_and_next(net, 1)
        opt.zero_grad()
        local_step(net, x, y)
        opt.step()
        _, nxt1 = ema_and_next(net, 1)
        ema1, _ = ema_and_next(net, 1)
        for e0, n1, e1 in zip(ema0, nxt1, ema1, strict=True):
            torch.testing.assert_close(e1, 0.9 * e0 + 0.1 * n1, rtol=1e-6, atol=1e-7)
    other = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)  # an optimizer without nxt: no move
    before, _ = ema_and_next(net, 1)
    other.step()
    assert all(torch.equal(a, b) for a, b in zip(before, ema_and_next(net, 1)[0], strict=True))
    clone = copy.deepcopy(net)  # a copy follows its own optimizer
    opt2 = torch.optim.SGD(clone.parameters(), lr=0.1)
    local_step(clone, x, y)
    before, _ = ema_and_next(clone, 1)
    opt2.step()
    assert not torch.equal(before[0], ema_and_next(clone, 1)[0][0])


def test_the_copy_follows_fit(tmp_path):
    net = small(man_momentum=0.5)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    ema0, _ = ema_and_next(net, 0)
    cfg = TrainConfig(epochs=1, lr=0.05, warmup_epochs=0, device="cpu", progress=False)
    Trainer(LocalStep.of(net, cfg), Loaders(loader, loader), cfg).fit()
    ema1, nxt1 = ema_and_next(net, 0)
    assert all(not torch.equal(a, b) for a, b in zip(ema0, ema1, strict=True))  # only the hook moves the copy
