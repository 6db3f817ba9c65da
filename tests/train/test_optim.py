import torch
from torch import nn

from contsup.method.tokens import TokenImageEncoder
from contsup.models import build_arch, vit
from contsup.train.optim import adamw, adamw_groups


def names_by_group(model: nn.Module) -> tuple[set[str], set[str]]:
    ids = [{id(p) for p in g["params"]} for g in adamw_groups(model.named_parameters())]
    named = dict(model.named_parameters())
    return tuple({n for n, p in named.items() if id(p) in group} for group in ids)


def test_vit_groups_by_name():
    net = vit(32, 2, 2, 4, 1, 10, 8)
    decay, no_decay = names_by_group(net)
    assert decay == {
        "units.0.patchify.proj.weight", "classifier.fc.weight",
        *(f"units.{u}.{m}.weight" for u in (1, 2) for m in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")),
    }
    expected_no_decay = {"units.0.patchify.proj.bias", "units.0.cls_token", "units.0.pos_embed",
                         "classifier.norm.weight", "classifier.norm.bias", "classifier.fc.bias"}
    for u in (1, 2):
        expected_no_decay |= {f"units.{u}.{m}.{w}" for m in ("norm1", "norm2") for w in ("weight", "bias")}
        expected_no_decay |= {f"units.{u}.{m}.bias" for m in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")}
    assert no_decay == expected_no_decay


def test_encoder_position_embedding_and_batchnorm_do_not_decay():
    decay, no_decay = names_by_group(TokenImageEncoder(3, 8, 8, 4))
    assert decay == {"patchify.proj.weight"} and no_decay == {"patchify.proj.bias", "pos_embed"}
    net = build_arch("resnet8", 3, 10)
    decay, no_decay = names_by_group(net)
    kernels = {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert decay == kernels and len(kernels) == 1 + 2 * 3 + 2 + 1  # stem, 3 blocks, 2 projections, fc
    assert "units.0.1.weight" in no_decay and "units.0.1.bias" in no_decay  # the stem's BatchNorm


def test_adamw_step_decays_only_the_first_group():
    """With zero gradients, AdamW only shrinks the decayed weights: w <- w (1 - lr wd)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = adamw(model.named_parameters(), lr=0.1, weight_decay=0.5, betas=(0.8, 0.9))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model[0].weight, before["0.weight"] * (1 - 0.1 * 0.5))
    for n in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(dict(model.named_parameters())[n], before[n])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    assert all(g["betas"] == (0.8, 0.9) and g["lr"] == 0.1 for g in opt.param_groups)


def test_groups_keep_their_order_when_one_is_empty():
    groups = adamw_groups(nn.Linear(3, 2, bias=False).named_parameters())
    assert [len(g["params"]) for g in groups] == [1, 0] and groups[1]["weight_decay"] == 0.0
