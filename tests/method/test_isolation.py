"""No gradient crosses a cut, for every registered head kind and head wrapper (parametrised over the registries)."""

import pytest
import torch
from tests.conftest import assert_no_gradient_crosses_a_cut

from contsup.errors import ContsupError
from contsup.method import HEAD_WRAPPERS, HEADS, LocalConfig, LocalNetwork
from contsup.models import build_arch

# a setting that turns each wrapper on (a new wrapper needs its line here, or the test below fails)
WRAPPER_ON = {"man": {"man_momentum": 0.9}, "pff": {"head_patches": 2}}


def network(head: str, context: str = "R1E", **local) -> tuple[LocalNetwork, torch.Tensor, torch.Tensor]:
    """K = 3 on a ResNet-8 (16 px) for heads of feature maps, on a ViT (14 px) for heads of tokens."""
    g = torch.Generator().manual_seed(1)
    backbones = [("vit-mini-p7", (1, 14, 14))] if "cuts" in local else [("resnet8", (3, 16, 16)),
                                                                        ("vit-mini-p7", (1, 14, 14))]
    for arch, shape in backbones:
        torch.manual_seed(0)
        try:
            net = LocalNetwork(build_arch(arch, shape[0], 10, shape[1]),
                               LocalConfig(modules=3, context=context, head=head, **local), torch.zeros(1, *shape))
        except ContsupError as err:
            if "token" in str(err) or "feature maps" in str(err):
                continue  # a head of the other layout
            raise
        return net, torch.randn(8, *shape, generator=g), torch.randint(0, 10, (8,), generator=g)
    raise AssertionError(f"head {head} builds on no test backbone")


@pytest.mark.parametrize("kind", HEADS.names())
def test_every_head(kind):
    assert_no_gradient_crosses_a_cut(*network(kind))


@pytest.mark.parametrize("wrapper", HEAD_WRAPPERS.names())
def test_every_wrapper(wrapper):
    assert_no_gradient_crosses_a_cut(*network("1c2f", "R1E", **WRAPPER_ON[wrapper]))


def test_wrappers_together_with_auglocal():
    assert_no_gradient_crosses_a_cut(*network("auglocal", "R1E", man_momentum=0.9, head_patches=2))


def test_the_proof_fails_on_a_head_that_trains_nothing():
    """A class token head right after the embedding (forced past the builder's refusal) is caught."""
    from contsup.method.heads.tokens import ClassTokenHead

    net, x, y = network("meantoken", "R0", cuts="0,4")
    net.objectives[0].head = ClassTokenHead(64, 10)
    with pytest.raises(AssertionError, match="untrained"):
        assert_no_gradient_crosses_a_cut(net, x, y)


def test_the_proof_fails_on_a_gradient_across_a_cut(monkeypatch):
    """A step that hands module j its input undetached lets module j's loss reach module j-1: the proof says so."""
    import sys

    from contsup.method.context.supply import CutContext

    step = sys.modules["contsup.method.local_step"]  # the package's `local_step` names the function
    def leaky(net, k, s, targets, amp, second=None):
        out = net.blocks[k](s)
        loss, prediction = net.objectives[k](out, targets)
        loss.backward(retain_graph=True)
        return (prediction if k == net.num_modules - 1 else out), loss.detach()

    forward = CutContext.forward
    monkeypatch.setattr(CutContext, "forward", lambda self, h, sources: forward(self, h, sources) - h.detach() + h)
    monkeypatch.setattr(step, "module_step", leaky)
    with pytest.raises(AssertionError, match=r"blocks\.0\."):
        assert_no_gradient_crosses_a_cut(*network("1c2f", "R0"))
