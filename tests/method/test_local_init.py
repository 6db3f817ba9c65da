import pytest
import torch
from tests.conftest import tiny_net
from torch import nn

import contsup.method.network as network
from contsup.config import TrainConfig
from contsup.errors import ContsupError
from contsup.method.local_step import local_step
from contsup.train.optim import make_optimizer


def one_step(net, optimizer, batch):
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    local_step(net, x, y)
    optimizer.step()
    return net.state_dict()


def test_options_off_give_todays_step_bit_for_bit(batch, monkeypatch):
    cfg = TrainConfig(lr=0.1, device="cpu")
    net = tiny_net(4, "R1E", local_init="torch", context_scale=1.0)
    after = one_step(net, make_optimizer(net.named_parameters(), cfg), batch)
    monkeypatch.setattr(network, "init_local_modules", lambda *a: None)  # today's network: no init pass at all
    old = tiny_net(4, "R1E")
    sgd = torch.optim.SGD(old.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    before = one_step(old, sgd, batch)
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_context_scale_sets_each_encoders_last_bn():
    net = tiny_net(4, "R1E", context_scale=0.1)
    for ctx in net.context:
        for enc in [*ctx.residual, ctx.image]:
            bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
            assert torch.all(bns[-1].weight == 0.1)
            assert all(torch.all(b.weight == 1.0) for b in bns[:-1])


def test_kaiming_init_touches_heads_and_encoders_only():
    plain, ref = tiny_net(4, "R1E"), tiny_net(4, "R1E", local_init="kaiming")
    for name, p in plain.state_dict().items():
        changed = not torch.equal(p, ref.state_dict()[name])
        is_local = name.startswith(("objectives.0.", "objectives.1.", "objectives.2.", "context."))
        is_local_conv = is_local and p.dim() == 4
        assert changed == is_local_conv, name


def test_context_lr_scale_puts_encoders_in_their_own_group():
    """The context group holds exactly the encoders' parameters; after a step at rate 0.1 x 0.5 they moved
    by exactly that rate's update (weight decay and momentum off), the rest by the full rate."""
    from contsup.train.schedule import make_schedule

    net = tiny_net(4, "R1E")
    cfg = TrainConfig(lr=0.1, context_lr_scale=0.5, momentum=0.5, weight_decay=0.0)
    opt = make_optimizer(net.named_parameters(), cfg)
    assert [g["name"] for g in opt.param_groups] == ["main", "context"]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in net.context.parameters()}
    make_schedule("epoch", 0.1, 1, 1, 0.0, None, 0.01).apply(opt, 0, 0)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt.step()
    for n, p in net.named_parameters():
        rate = 0.1 * (0.5 if n.startswith("context.") else 1.0)
        # Nesterov's first step with a fresh buffer b = g: p -= lr * (g + momentum * b) = lr * 1.5 * g.
        assert torch.allclose(before[n] - p.detach(), torch.full_like(p, rate * 1.5)), n


@pytest.mark.parametrize("kw", [dict(local_init="xavier"), dict(context_scale=0.0)])
def test_bad_init_options_raise(kw):
    with pytest.raises(ContsupError):
        tiny_net(4, "R1E", **kw)
