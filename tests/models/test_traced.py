"""Models as users write them go into LocalNetwork unchanged: traced, cut at legal block boundaries, trained locally.

One body per property, parametrized over every model of `user_models` (timm style).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import gradient_leaks
from tests.models import user_models

from contsup.errors import ContsupError
from contsup.method import LocalConfig, LocalNetwork, local_step
from contsup.models import Backbone, trace_backbone
from contsup.profile.runner import ProfileConfig, profile_one

MODELS = ["resnet50_like", "hf_vit", "sequential_cnn", "unet_classifier"]
# Where each model's cuts may fall (its block boundaries with one tensor alive), in order.
LEGAL = {
    "resnet50_like": ["relu", "maxpool", "layer1", "layer2.0", "layer2", "layer3"],
    "hf_vit": ["vit.embeddings", "vit.encoder.layer.0", "vit.encoder.layer.1", "vit.encoder.layer.2"],
    "sequential_cnn": ["2", "5", "6", "9"],  # after each ReLU and the pool: never between a conv and its BN
    "unet_classifier": ["stem.double_conv.2", "stem", "inc.double_conv.2", "inc", "up2.conv.double_conv.2", "up2",
                        "post.double_conv.2"],  # nothing inside the U: its skips cross every point there
}


def make(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(user_models, name)()


def sample() -> torch.Tensor:
    return torch.zeros(user_models.SAMPLE)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, *user_models.SAMPLE[1:], generator=g), torch.randint(0, 10, (4,), generator=g)


@pytest.mark.parametrize("name", MODELS)
def test_legal_cuts_are_the_block_boundaries(name):
    backbone = trace_backbone(make(name), sample())
    assert backbone.unit_labels[:-1] == LEGAL[name]


@pytest.mark.parametrize("name", MODELS)
def test_k1_is_the_models_own_forward_and_backward(name):
    """K = 1 trains the model's own parameters exactly as plain backprop does, over three SGD steps."""
    x, y = batch()
    plain = make(name)
    twin = copy.deepcopy(plain)
    net = LocalNetwork(twin, LocalConfig(modules=1, context="R0"), sample())
    assert {id(p) for p in net.parameters()} == {id(p) for p in twin.parameters()}  # the model's own weights
    opt_a = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt_a.zero_grad()
        logits = plain(x)
        F.cross_entropy(logits, y).backward()
        opt_a.step()
        opt_b.zero_grad()
        assert torch.equal(local_step(net, x, y).logits, logits)
        opt_b.step()
    for (n, a), b in zip(plain.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b), n
    plain.eval(), net.eval()
    assert torch.equal(net(x), plain(x))


@pytest.mark.parametrize("head", ["1c2f", "auglocal"])  # the default (token heads on token cuts) and AugLocal
@pytest.mark.parametrize("name", MODELS)
def test_four_modules_are_isolated_and_train(name, head):
    """K = 4, R1E: no gradient crosses a cut (the isolation proof of test_local_step), and the losses drop."""
    if head == "auglocal" and name == "hf_vit":
        with pytest.raises(ContsupError, match="needs feature maps"):
            LocalNetwork(make(name), LocalConfig(modules=4, context="R1E", head=head), sample())
        return
    x, y = batch()
    net = LocalNetwork(make(name), LocalConfig(modules=4, context="R1E", head=head), sample())
    assert len(net.cut_names) == 3 and set(net.cut_names) <= set(LEGAL[name])
    assert gradient_leaks(net, x, y) == []
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    first = local_step(net, x, y).losses
    for _ in range(5):
        opt.zero_grad()
        last = local_step(net, x, y).losses
        opt.step()
    assert bool((last < first).all()), (first, last)


@pytest.mark.parametrize("name", MODELS)
def test_profile_measures_it(name):
    """`contsup profile` builds a user's model from its reference and measures a real step."""
    cfg = ProfileConfig(arch=f"tests.models.user_models:{name}", modules=(2,), contexts=("R1E",), batch_size=2,
                        input_shape=user_models.SAMPLE[1:], warmup=0, steps=1, device="cpu", flops=False)
    row = profile_one(cfg, 2, "R1E")
    assert row.peak_bytes > 0 and row.saved_peak_bytes > 0 and len(row.cuts) == 1


def test_named_cuts_and_where_they_fell():
    """`cuts` names module paths as the user knows them; the network says where its cuts fell."""
    config = LocalConfig(modules=3, cuts="layer1,layer2.0")
    net = LocalNetwork(make("resnet50_like"), config, sample())
    assert net.cut_names == ["layer1", "layer2.0"] and net.cuts == [2, 3]
    assert "cut after layer2.0" in net.describe()


@pytest.mark.parametrize("name,cut,message", [
    ("unet_classifier", "down1", "cut 'down1' is not legal: the output of inc skips over it to 'cat_1' in up2; "
                                 "the legal cuts nearest: inc.double_conv.2, inc, up2.conv.double_conv.2, up2"),
    ("resnet50_like", "bn1", "cut 'bn1' is not legal: a normalisation or activation follows it"),
    ("sequential_cnn", "0", "cut '0' is not legal: a normalisation or activation follows it"),
    ("resnet50_like", "layer9", "cut 'layer9': ResNet's forward calls that module nowhere"),
    ("resnet50_like", "layer1.0.relu", "calls that module more than once"),
    ("resnet50_like", "layer4", "leaves no unit after it"),
])
def test_a_cut_that_is_not_legal_is_refused_in_one_line(name, cut, message):
    with pytest.raises(ContsupError) as err:
        LocalNetwork(make(name), LocalConfig(modules=2, cuts=cut), sample())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_data_dependent_branch_is_refused_in_one_line():
    with pytest.raises(ContsupError) as err:
        LocalNetwork(make("branchy"), LocalConfig(modules=2), sample())
    text = str(err.value)
    assert text.startswith("cannot trace Branchy.forward with torch.fx") and "control flow" in text
    assert "contsup.Backbone(units, classifier)" in text and "\n" not in text


def test_too_few_legal_cuts_name_the_widest_skip():
    with pytest.raises(ContsupError, match=r"K = 9 needs 8 cuts, but UNetClassifier has 7 legal cuts .* the widest "
                                           r"skip runs from inc to 'cat_1' in up2"):
        LocalNetwork(make("unet_classifier"), LocalConfig(modules=9), sample())


def conv_relu() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())


class Tied(torch.nn.Module):
    """One convolution used at two places of the forward (tied weights), with blocks between its uses."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b, self.c = conv_relu(), conv_relu(), conv_relu(), conv_relu()
        self.shared = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.repeat(1, 8, 1, 1)[:, :8])
        x = torch.relu(self.shared(x))
        x = self.c(self.b(torch.relu(self.shared(self.a(x)))))
        return self.fc(x.mean((2, 3)))


def test_no_cut_splits_tied_weights():
    """A module that runs on both sides of a point makes it no cut (its gradient would come from two modules)."""
    backbone = trace_backbone(Tied(), torch.zeros(1, 1, 8, 8))
    assert backbone.unit_labels == ["stem", "b", "c"]
    with pytest.raises(ContsupError, match="cut 'a' is not legal: the weights of 'shared' are used on both sides"):
        LocalNetwork(Tied(), LocalConfig(modules=2, cuts="a"), torch.zeros(1, 1, 8, 8))


def test_a_split_by_hand_that_ends_flat_points_to_the_model_as_written():
    """The newcomer's first try, the Sequential's layers as units: refused, naming the way that works."""
    with pytest.raises(ContsupError, match=r"got shape \(1, 1024\); a model as written .* contsup.LocalNetwork\(model"):
        Backbone.from_units(list(make("sequential_cnn")), 10, sample())


class GlobalSkip(torch.nn.Module):
    """Blocks whose output is added to the input at the end: the skip spans the whole model."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(conv_relu(), conv_relu(), conv_relu())
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x + self.body(x)).mean((2, 3)))


def test_a_skip_spanning_the_whole_model_leaves_no_cut():
    with pytest.raises(ContsupError) as err:
        LocalNetwork(GlobalSkip(), LocalConfig(modules=2), torch.zeros(1, 8, 8, 8))
    assert str(err.value) == (
        "K = 2 needs 1 cut, but GlobalSkip has 0 legal cuts (none): the widest skip runs from the input 'x' to 'add'; "
        "lower --modules, or give it as a chain of units instead: contsup.Backbone(units, classifier) "
        "(docs/models.md)")
    net = LocalNetwork(GlobalSkip(), LocalConfig(modules=1), torch.zeros(1, 8, 8, 8))  # K = 1 needs no cut
    assert net.num_modules == 1 and net.cut_names == []
