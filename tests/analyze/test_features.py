import pytest
import torch
from tests.conftest import tiny_net

from contsup.analyze import parse_units, walk_boundaries
from contsup.errors import ContsupError


@pytest.mark.quick
def test_walk_gives_module_outputs_and_context_supplied_inputs(batch):
    x, _ = batch
    net = tiny_net(4, "R1E")
    net.train()
    feats = list(walk_boundaries(net, x, range(9), batch_size=3))
    assert net.training  # mode restored
    assert [f.unit for f in feats] == list(range(9))
    assert [f.supplied for f in feats] == [u in net.cuts for u in range(9)]
    net.eval()
    with torch.no_grad():
        h0 = net.blocks[0](x)
        first = feats[net.cuts[0]]
        assert torch.allclose(first.h, h0, atol=1e-5)
        assert torch.allclose(first.hc, net.module_input(1, h0, {0: x}), atol=1e-5)
        assert not torch.allclose(first.hc, first.h)
        # Finishing the chain from the last boundary gives the network's own output.
        logits = net.classifier(net.blocks[-1][-1](feats[-1].hc))
        assert torch.allclose(logits, net(x), atol=1e-4)
    assert first.name == f"1.{net.cuts[0] - 1}" and feats[0].name == "0.0"


def test_r0_and_e2e_add_nothing(batch):
    x, _ = batch
    for net in (tiny_net(4, "R0"), tiny_net(1, "R0")):
        feats = list(walk_boundaries(net, x, [1, 4, 7]))
        assert [f.unit for f in feats] == [1, 4, 7]
        assert all(f.hc is f.h for f in feats)


def test_parse_units():
    names = tiny_net(2).unit_names
    assert parse_units("all", names) == list(range(len(names) - 1))
    assert parse_units("1.0,2.1", names) == [1, 5]
    assert parse_units("0,3", names) == [0, 3]
    for bad, message in (("3,1", "strictly increasing"), ("9", "out of range"), ("4.0", "names no unit"),
                         ("x", "cannot read")):
        with pytest.raises(ContsupError, match=message):
            parse_units(bad, names)
