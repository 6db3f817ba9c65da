import torch
from benchmarks.peak_breakdown import live_at_peak, step_events
from tests.conftest import tiny_net

from contsup.memory import measure_peak
from contsup.method import local_step
from contsup.profile.bound import lower_bound


def test_one_unit_modules_peak_in_a_unit_backward_close_to_their_bound():
    """ResNet-20 with one unit a module (K = 10 R1E, channels_last): the breakdown's labelled step peaks as high as
    the plain step, in a module's step. What is alive there besides the parameters' gradients is the bound's
    module (six 16-channel maps and its head, about one map) with autograd's gradients in flight through BatchNorm's
    backward (three maps) in place of the head: 9 maps, within 2.25 of the bound's 7.07. With the image encoder's
    one-pass recompute its backward peaked higher (9.5 maps: docs/benchmarks.md, ResNet-110 at fine cuts)."""
    fmt = torch.channels_last
    net = tiny_net(10, "R1E", cut_table="balanced").train().to(memory_format=fmt)
    assert net.cuts == list(range(9))
    x, y = torch.randn(16, 3, 16, 16).contiguous(memory_format=fmt), torch.randint(0, 10, (16,))
    local_step(net, x, y)  # every parameter has its gradient, as after the optimizer's first step
    _, plain = measure_peak(lambda: local_step(net, x, y), torch.device("cpu"))
    peak, live, where = live_at_peak(step_events(net, x, y))
    assert abs(peak - plain.peak_bytes) <= 64  # the losses: stacked per module here, once in local_step
    assert any(c.startswith("module ") for c in where)
    grads = {p.grad.untyped_storage().data_ptr() for p in net.parameters()}
    activations = sum(size for ptr, (size, _) in live.items() if ptr not in grads)
    one_map = 16 * 16 * 16 * 16 * 4
    assert activations <= lower_bound(net, 16).activations + 2.25 * one_map
