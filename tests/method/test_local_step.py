import copy

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import gradient_leaks, tiny_net, train_end_to_end_and_k1

from contsup.errors import ContsupError
from contsup.method import LocalConfig, LocalNetwork, local_step
from contsup.method.local_step import clip_module_grads
from contsup.method.losses import supcon_loss
from contsup.models import resnet


def grads(net):
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in net.named_parameters()}


def changed(a, b):
    out = set()
    for n in a:
        if (a[n] is None) != (b[n] is None) or (a[n] is not None and not torch.allclose(a[n], b[n], atol=0)):
            out.add(n)
    return out


@pytest.mark.parametrize("mode", ["R0", "E", "R1", pytest.param("R2E", marks=pytest.mark.quick), "R4"])
def test_no_gradient_crosses_a_cut(mode, batch):
    """Changing head j's loss changes only module j, head j and the encoders that feed module j."""
    x, y = batch
    assert gradient_leaks(tiny_net(4, mode), x, y) == []


def test_encoders_get_gradient_only_from_next_module(batch):
    x, y = batch
    net = tiny_net(4, "R2E")
    # Per cut k, the gradient of module k+1's loss alone reaches context k; with every later module's
    # loss removed (by detaching their inputs) the encoder gradients are unchanged.
    local_step(net, x, y)
    full = grads(net)
    for k in range(3):
        net.zero_grad()
        sources = {0: x}
        h = net.blocks[0](x)
        for i in range(k + 1):
            s = net.module_input(i + 1, h, sources)
            h = net.blocks[i + 1](s if i == k else s.detach())
        loss = net.classifier(h) if k == 2 else net.objectives[k + 1].head(h)
        F.cross_entropy(loss, y).backward()
        for n, p in net.context[k].named_parameters():
            assert torch.allclose(p.grad, full[f"context.{k}.{n}"], atol=1e-6)


@pytest.mark.quick
def test_k1_equals_end_to_end(batch):
    x, y = batch
    torch.manual_seed(0)
    plain = resnet(20, 3, 10)
    a, b = train_end_to_end_and_k1(plain, torch.zeros(1, 3, 16, 16), x, y, nesterov=True, weight_decay=1e-4)
    for n, p in a.items():
        assert torch.allclose(p, b[n], atol=1e-6), n


def test_inference_matches_training_path(batch):
    x, y = batch
    net = tiny_net(4, "R1E")
    net.eval()
    out = local_step(net, x, y)
    assert torch.allclose(out.logits, net(x), atol=1e-5)


def test_reconstruction_term_is_the_weighted_sum(batch):
    """Module k's loss is lambda_x(k) * BCE(sigmoid(decoder logits), pixels) + lambda_y(k) * CE(head), by hand."""
    x, y = batch
    net = tiny_net(3, "R1E", recon="5,0.5,1,2")
    pixels = torch.rand_like(x)
    twin = copy.deepcopy(net)
    out = local_step(net, x, y, pixels=pixels)
    h0 = twin.blocks[0](x)
    obj = twin.objectives[0]
    by_hand = 5 * F.binary_cross_entropy(torch.sigmoid(obj.decoder(h0)), pixels) + 0.5 * F.cross_entropy(
        obj.task.head(h0), y)
    assert out.losses[0].item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert (obj.lambda_x, obj.lambda_y, twin.objectives[1].lambda_x, twin.objectives[1].lambda_y) == (5, 0.5, 1, 2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.objectives[0].decoder.parameters())
    with pytest.raises(ContsupError, match="pixels"):
        local_step(net, x, y)


def test_contrast_loss_step(batch):
    """With the contrastive loss, module 0's loss is the supervised contrastive loss of its head's embedding."""
    x, y = batch
    net = tiny_net(3, "E", loss="contrast")
    twin = copy.deepcopy(net)
    out = local_step(net, x, y)
    emb = twin.objectives[0].head(twin.blocks[0](x))
    assert emb.shape == (8, 128)
    assert out.losses[0].item() == pytest.approx(supcon_loss(emb, y).item(), rel=1e-5)
    assert out.losses[-1].item() == pytest.approx(F.cross_entropy(out.logits, y).item(), rel=1e-5)


# -- parameter counts for ResNet-32, K=16, written from the spec's layer shapes ---------------------
CUT_CH = [16] * 6 + [32] * 5 + [64] * 4  # channels after each of the 15 cuts (ResNet-32, K=16)
SRC_CH = [3] + CUT_CH  # channels of module inputs s_0 = x, s_1..s_15


def head_1c2f(c: int, classes: int = 10, w: int = 128) -> int:
    c2 = c if c == 64 else 2 * c
    return c * c2 * 9 + 2 * c2 + c2 * w + w + w * classes + classes


def image_enc(c: int, in_ch: int = 3) -> int:
    return in_ch * 12 * 9 + 12 + 2 * 12 + 12 * c * 9 + c + 2 * c


def res_enc(c_src: int, c: int) -> int:
    return c_src * c + c + 2 * c


def expected_context(window: int, image: bool) -> int:
    total = 0
    for k, c in enumerate(CUT_CH, start=1):
        if image:
            total += image_enc(c)
        for j in range(k - 1, max(k - window, 1 if image else 0) - 1, -1):
            total += res_enc(SRC_CH[j], c)
    return total


@pytest.mark.parametrize("mode,window,image", [("R0", 0, False), ("E", 0, True), ("R1", 1, False),
                                               ("R1E", 1, True), ("R2", 2, False), ("R3E", 3, True)])
def test_param_counts_resnet32_k16(mode, window, image):
    net = LocalNetwork(resnet(32, 3, 10), LocalConfig(modules=16, context=mode), torch.zeros(1, 3, 32, 32))
    counts = net.param_counts()
    assert counts["backbone"] == 466_906
    assert counts["heads"] == sum(head_1c2f(c) for c in CUT_CH)
    assert counts["decoders"] == 0
    assert counts["context"] == expected_context(window, image)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


@pytest.mark.parametrize("mode", ["R0", "E", "R1", "R2E"])
@pytest.mark.parametrize("objective", [{}, {"recon": "1,1,1,1"}, {"loss": "contrast", "head": "0c2f"},
                                       {"head": "0c1f,1c2f,2c1f"}])
def test_module_parameters_partition_the_network(mode, objective):
    """Every parameter belongs to exactly one module, and every state entry to exactly one module's parts."""
    net = tiny_net(4, mode, **objective)
    owned = [id(p) for k in range(net.num_modules) for p in net.module_parameters(k)]
    assert sorted(owned) == sorted(id(p) for p in net.parameters())
    prefixes = [p for k in range(net.num_modules) for p in net.module_parts(k)]
    for key in net.state_dict():
        assert sum(key.startswith(p) for p in prefixes) == 1, key


def test_clipping_bounds_each_module_alone(batch):
    """clip_module_grads scales each module's gradient to at most the bound; modules under it are untouched."""
    x, y = batch
    net = tiny_net(4, "R1E")
    local_step(net, x, y)
    norms = [torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.module_parameters(k)]))
             for k in range(4)]
    bound = float(sorted(norms)[1]) * 1.01  # two modules above the bound, two below
    before = grads(net)
    clip_module_grads(net, range(4), bound)
    for k, norm in enumerate(norms):
        params = net.module_parameters(k)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        if norm <= bound:
            assert all(torch.equal(p.grad, before[n]) for n, p in net.named_parameters() if any(p is q for q in params))
        else:
            assert after == pytest.approx(bound, rel=1e-4)


def test_end_to_end_step_holds_no_more_than_plain_backprop():
    """K = 1: the local step's peak is plain backprop's (the last module's output is not kept through backward)."""
    import torch.nn.functional as F

    from contsup.memory import measure_peak
    from contsup.method.local_step import local_step

    torch.manual_seed(0)
    net = LocalNetwork(resnet(32, 1, 10), LocalConfig(modules=1), torch.zeros(1, 1, 28, 28)).train()
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def plain():
        F.cross_entropy(net.classifier(net.blocks[0](x)), y).backward()

    def local():
        local_step(net, x, y)

    plain()
    peaks = [measure_peak(fn, torch.device("cpu"))[1].peak_bytes for fn in (plain, local)]
    assert peaks[1] <= peaks[0] * 1.002  # keeping the last block's output would add 0.65 %
