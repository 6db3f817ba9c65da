import math

import pytest
import torch

from contsup.errors import ContsupError
from contsup.train.schedule import default_warmup, lr_at, make_schedule


def test_paper_per_epoch_values_unchanged():
    assert lr_at(0, 160, 0.8, 10) == pytest.approx(0.01)
    assert lr_at(10, 160, 0.8, 10) == pytest.approx(0.4 * (1 + math.cos(math.pi * 10 / 160)))
    assert lr_at(5, 160, 0.8, 10) == pytest.approx((0.01 + lr_at(10, 160, 0.8, 10)) / 2)
    assert lr_at(159, 160, 0.8, 10) < 0.001
    assert lr_at(0, 2, 0.1, 0) == pytest.approx(0.1)
    assert default_warmup(160) == 10 and default_warmup(8) == 0
    s = make_schedule("epoch", 0.8, 160, 49)
    assert s.warmup == 10
    for epoch in (0, 5, 10, 100):  # one rate for every batch of an epoch, the paper's value
        assert {s.lr(epoch, b) for b in (0, 20, 48)} == {lr_at(epoch, 160, 0.8, 10)}


@pytest.mark.quick
def test_per_step_values_at_known_steps():
    s = make_schedule("step", 0.1, 2, 100, warmup_steps=20)
    assert s.warmup_steps == 20
    target = 0.05 * (1 + math.cos(math.pi * 20 / 200))  # the cosine curve at step 20 of 200
    assert s.lr(0, 0) == pytest.approx(0.01)
    assert s.lr(0, 10) == pytest.approx((0.01 + target) / 2)
    assert s.lr(0, 20) == pytest.approx(target)
    assert s.lr(1, 0) == pytest.approx(0.05)  # half-way through the run: half the base rate
    assert s.lr(1, 50) == pytest.approx(0.05 * (1 + math.cos(math.pi * 150 / 200)))
    rates = [s.lr(e, b) for e in range(2) for b in range(100)]
    assert all(a < b for a, b in zip(rates[:20], rates[1:21], strict=True))  # rising during the warm-up
    assert all(a > b for a, b in zip(rates[20:], rates[21:], strict=False))  # falling afterwards


def test_warmup_length_in_epochs_or_steps():
    assert make_schedule("step", 0.1, 4, 50, warmup_epochs=0.5).warmup_steps == 25
    assert make_schedule("step", 0.1, 4, 50, warmup_steps=7).warmup_steps == 7
    assert make_schedule("step", 0.1, 160, 50).warmup_steps == 500  # the paper's 10 of 160 epochs
    assert make_schedule("step", 0.1, 2, 78).warmup_steps == 39  # a short run: half an epoch, not none
    assert make_schedule("step", 0.1, 8, 10).warmup_steps == 10  # at most one epoch once the run has 4
    assert make_schedule("step", 0.1, 2, 78, warmup_epochs=0).lr(0, 0) == pytest.approx(0.1)


def test_apply_sets_every_group_with_its_scale():
    w, v = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w]}, {"params": [v], "lr_scale": 0.1}], lr=1.0)
    lr = make_schedule("step", 0.1, 2, 10, warmup_epochs=0).apply(opt, 0, 0)
    assert lr == pytest.approx(0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.01])


@pytest.mark.parametrize("kw", [dict(kind="cosine"), dict(warmup_epochs=1, warmup_steps=3), dict(warmup_steps=-1),
                                dict(kind="epoch", warmup_epochs=0.5), dict(kind="epoch", warmup_steps=3)])
def test_bad_schedules_raise(kw):
    args = {"kind": "step", "base_lr": 0.1, "epochs": 2, "steps_per_epoch": 10, **kw}
    with pytest.raises(ContsupError):
        make_schedule(**args)
