import torch
from tests.conftest import tiny_net

from contsup.method import local_step
from contsup.method.local_step import modules_step
from contsup.method.objective import Targets


def infer(net, modules, h, sources):
    """The inference pass over `modules` along `module_input`, as a pipeline stage runs it."""
    for k in modules:
        h = net.blocks[k](net.module_input(k, h, sources))
    return net.classifier(h) if modules.stop == net.num_modules else h


def test_inference_in_pieces_equals_the_whole_pass(batch):
    """Running modules 0..1 then 2..3 (as two pipeline stages would) gives the network's own output."""
    x, _ = batch
    net = tiny_net(4, "R2E").eval()
    with torch.no_grad():
        sources = {0: x}
        h = infer(net, range(0, 2), x, sources)
        assert set(sources) == {j for j in range(2) if net.last_use[j] >= 1}  # what crosses to module 2
        assert torch.equal(infer(net, range(2, 4), h, sources), net(x))


def test_modules_step_in_pieces_equals_local_step(batch):
    x, y = batch
    whole, parts = tiny_net(4, "R1E"), tiny_net(4, "R1E")
    out = local_step(whole, x, y)
    sources = {0: x}
    targets = Targets(y)
    h, first = modules_step(parts, range(0, 3), x, sources, targets)
    logits, last = modules_step(parts, range(3, 4), h, sources, targets)
    assert torch.equal(torch.cat([first, last]), out.losses)
    assert torch.equal(logits, out.logits)
    for (name, p), q in zip(whole.named_parameters(), parts.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


def test_module_input_is_the_supplied_detached_output(batch):
    """s_k = h_{k-1}.detach() + encoded sources: shaped like the cut, no gradient path to module k-1."""
    x, _ = batch
    net = tiny_net(3, "R1")
    sources = {0: x}
    h = net.blocks[0](x)
    s = net.module_input(1, h, sources)
    assert s.shape[1:] == torch.Size(net.source_shapes[1].dims)
    assert torch.equal(sources[1], s.detach()) and not sources[1].requires_grad
    s.sum().backward()
    assert all(p.grad is None for p in net.blocks[0].parameters())
    assert all(p.grad is not None for p in net.context[0].parameters())
