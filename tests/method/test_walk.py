import torch
from tests.conftest import tiny_net

from contsup.method import local_step
from contsup.method.step import modules_step


def test_walk_in_pieces_equals_the_whole_walk(batch):
    """Running modules 0..1 then 2..3 (as two pipeline stages would) gives the network's own output."""
    x, _ = batch
    net = tiny_net(4, "R2E").eval()
    with torch.no_grad():
        sources = {0: x}
        h = net.run(net.infer_module, x, sources, range(0, 2))
        assert set(sources) == {j for j in range(2) if net.last_use[j] >= 1}  # what crosses to module 2
        logits = net.run(net.infer_module, h, sources, range(2, 4))
        assert torch.equal(logits, net(x))


def test_modules_step_in_pieces_equals_local_step(batch):
    x, y = batch
    whole, parts = tiny_net(4, "R1E"), tiny_net(4, "R1E")
    out = local_step(whole, x, y)
    sources = {0: x}
    h, first = modules_step(parts, range(0, 3), x, sources, y)
    logits, last = modules_step(parts, range(3, 4), h, sources, y)
    assert torch.equal(torch.cat([first, last]), out.losses)
    assert torch.equal(logits, out.logits)
    for (name, p), q in zip(whole.named_parameters(), parts.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


def test_walk_hands_each_module_its_supplied_input(batch):
    x, _ = batch
    net = tiny_net(3, "R1")
    seen = []

    def record(k, h_in):
        seen.append((k, h_in.shape))
        return net.infer_module(k, h_in)

    with torch.no_grad():
        assert torch.equal(net.eval().run(record, x, {0: x}), net(x))
    assert [k for k, _ in seen] == [0, 1, 2]
    assert [s[1:] for _, s in seen] == [torch.Size([s.channels, s.height, s.width]) for s in net.source_shapes]
