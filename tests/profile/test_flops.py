import pytest
import torch
from tests.conftest import tiny_net

from contsup.method import local_step
from contsup.profile.flops import GROUPS, count_flops
from contsup.profile.runner import ProfileConfig, profile_one


def test_flops_split_into_groups():
    cfg = ProfileConfig(arch="resnet20", batch_size=4, input_shape=(3, 8, 8), warmup=1, steps=1, device="cpu",
                        memory=False)
    e2e = profile_one(cfg, 1, "E2E")
    local = profile_one(cfg, 4, "R1E")
    assert e2e.flops["heads"] == e2e.flops["context"] == 0
    assert local.flops["heads"] > 0 and local.flops["context"] > 0
    assert local.flops["backbone"] == e2e.flops["backbone"]  # same backbone work, cut or not
    for row in (e2e, local):
        assert sum(row.flops[g] for g in ("backbone", "heads", "decoders", "context", "other")) == row.flops["total"]


@pytest.mark.parametrize("settings", [
    {"recon": "1,1,0.5,0.5"},
    {"recon": "1,1,0.5,0.5", "man_momentum": 0.9},
    {"recon": "5,0.5,0,0", "recon_schedule": "hpff", "cascade": 0.999, "head": "2c2f"},
    {"head": "auglocal"},
], ids=["recon", "recon+man", "cascade", "auglocal"])
def test_each_flop_counted_in_one_group(settings):
    """With the softmax loss every FLOP is some module's: nothing is left over, and nothing counted twice (a head
    and a decoder reading the same h once counted part of each other's backward)."""
    net = tiny_net(4, "R1E", **settings).train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    _, flops = count_flops(net, lambda: local_step(net, x, y, torch.rand_like(x)))
    assert flops["other"] == 0, flops
    assert sum(flops[g] for g in GROUPS) == flops["total"] > 0
