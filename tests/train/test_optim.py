import copy

import pytest
import torch
from tests.conftest import tiny_net
from torch import nn

from contsup.config import TrainConfig
from contsup.method.context.tokens import TokenImageEncoder
from contsup.method.local_step import local_step
from contsup.models import build_arch, vit
from contsup.train.optim import (
    load_named_state,
    make_optimizer,
    merge_named_states,
    named_state,
    param_groups,
    param_names,
)

ADAMW = TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5)


def names_by_group(model: nn.Module, cfg: TrainConfig = ADAMW) -> dict[str, set[str]]:
    named = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {named[id(p)] for p in g["params"]} for g in param_groups(model.named_parameters(), cfg)}


def test_vit_groups_by_name():
    net = vit(32, 2, 2, 4, 1, 10, 8)
    groups = names_by_group(net)
    assert groups["main"] == {
        "units.0.patchify.proj.weight", "classifier.fc.weight",
        *(f"units.{u}.{m}.weight" for u in (1, 2) for m in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")),
    }
    expected_no_decay = {"units.0.patchify.proj.bias", "units.0.cls_token", "units.0.pos_embed",
                         "classifier.norm.weight", "classifier.norm.bias", "classifier.fc.bias"}
    for u in (1, 2):
        expected_no_decay |= {f"units.{u}.{m}.{w}" for m in ("norm1", "norm2") for w in ("weight", "bias")}
        expected_no_decay |= {f"units.{u}.{m}.bias" for m in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")}
    assert groups["main-no-decay"] == expected_no_decay


def test_encoder_position_embedding_and_batchnorm_do_not_decay():
    groups = names_by_group(TokenImageEncoder(3, 8, 8, 4))
    assert groups == {"main": {"patchify.proj.weight"}, "main-no-decay": {"patchify.proj.bias", "pos_embed"}}
    net = build_arch("resnet8", 3, 10)
    groups = names_by_group(net)
    kernels = {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert groups["main"] == kernels and len(kernels) == 1 + 2 * 3 + 2 + 1  # stem, 3 blocks, 2 projections, fc
    assert {"units.0.1.weight", "units.0.1.bias"} <= groups["main-no-decay"]  # the stem's BatchNorm


def test_adamw_step_decays_only_the_decay_group():
    """With zero gradients, AdamW only shrinks the decayed weights: w <- w (1 - lr wd)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model.named_parameters(), ADAMW)
    assert isinstance(opt, torch.optim.AdamW)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model[0].weight, before["0.weight"] * (1 - 0.1 * 0.5))
    for n in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(dict(model.named_parameters())[n], before[n])


def test_sgd_decays_everything_and_scales_the_context_group():
    net = tiny_net(3, "R1E")
    groups = names_by_group(net, TrainConfig(context_lr_scale=0.5))
    assert set(groups) == {"main", "context"}
    assert groups["context"] == {n for n, _ in net.named_parameters() if n.startswith("context.")}
    # one SGD step on zero gradients is the decay alone, on every parameter (Nesterov: buf = wd p, step (1 + m) wd p)
    cfg = TrainConfig(lr=0.5, weight_decay=0.1, context_lr_scale=0.5)
    opt = make_optimizer(net.named_parameters(), cfg)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert [g.get("lr_scale") for g in opt.param_groups] == [None, 0.5]  # the schedule applies it to the rate
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] * (1 - cfg.lr * 1.9 * 0.1), rtol=1e-6, atol=0, msg=n)


@pytest.mark.parametrize("cfg", [TrainConfig(lr=0.1, context_lr_scale=0.5), ADAMW])
def test_named_state_of_stages_merges_into_the_one_process_state(cfg, batch):
    """Two optimizers over two halves of the network, stepped on the same gradients as one optimizer over
    all of it, merge into exactly the one-process named state; loading it back into either half restores
    exactly that half's state."""
    x, y = batch
    net = tiny_net(3, "R1E")
    local_step(net, x, y)
    twin = copy.deepcopy(net)  # the same weights and gradients
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()
    whole = make_optimizer(twin.named_parameters(), cfg)
    named = list(net.named_parameters())
    halves = [make_optimizer(named[:20], cfg), make_optimizer(named[20:], cfg)]
    for opt in (whole, *halves):
        opt.step()  # each parameter of `net` is stepped by exactly one of the halves
    names = param_names(net)
    merged = merge_named_states([named_state(h, names) for h in halves], [n for n, _ in named])
    single = named_state(whole, param_names(twin))
    assert [g["params"] for g in merged["param_groups"]] == [g["params"] for g in single["param_groups"]]
    assert merged["state"].keys() == single["state"].keys()
    for n in single["state"]:
        for k, v in single["state"][n].items():
            assert torch.equal(v, merged["state"][n][k])
    fresh = make_optimizer(named[20:], cfg)
    load_named_state(fresh, copy.deepcopy(single), names)
    for a, b in zip(fresh.state_dict()["state"].values(), halves[1].state_dict()["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
