import os

import pytest
import torch
from torch import nn

from contsup.memory import cpu_peak_from_events, measure_peak, saved_bytes
from contsup.profile.runner import ProfileConfig, profile_one

CPU = torch.device("cpu")


def test_peak_of_events_follows_time_order():
    # Out of order on purpose: in time order the level goes 5, 2, 9, 0.
    events = [(3, 7), (1, 5), (4, -9), (2, -3)]
    assert cpu_peak_from_events(events) == 9


@pytest.mark.quick
def test_cpu_peak_sees_allocations_and_frees():
    a = torch.randn(500, 500)  # 1 MB of float32

    def work():
        b = a * 2  # +1 MB
        c = b + 1  # +1 MB (peak 2 MB)
        del b  # -1 MB
        d = c * 3  # +1 MB (2 MB again)
        return d.sum()

    _, peak = measure_peak(work, CPU)
    mb = 500 * 500 * 4
    assert 2 * mb <= peak.peak_bytes < 2 * mb + 64 * 1024


def test_cpu_peak_leaves_no_profiler_lines_on_stderr_and_keeps_stderr(capfd):
    _, peak = measure_peak(lambda: torch.randn(100, 100) * 2, CPU)
    os.write(2, b"still here\n")
    err = capfd.readouterr().err
    assert peak.peak_bytes > 0 and "profiler" not in err and err == "still here\n"


def test_saved_tensors_match_hand_count():
    """Linear -> ReLU -> Linear on (N, 4): autograd keeps x (N x 4) for the first weight's gradient and the
    ReLU output (N x 8, saved by ReLU and by the second Linear: one storage); weights are parameters."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    loss, counter = saved_bytes(lambda: net(x).sum(), exclude=net)
    assert counter.peak == counter.total == 5 * 4 * 4 + 5 * 8 * 4
    assert counter.current == counter.peak
    loss.backward()
    assert counter.current == 0  # freed with the graph


def test_k16_step_peak_below_k1():
    cfg = ProfileConfig(arch="resnet32", batch_size=16, input_shape=(3, 16, 16), warmup=1, steps=0, device="cpu",
                        flops=False)
    e2e = profile_one(cfg, 1, "E2E")
    local = profile_one(cfg, 16, "R1E")
    assert local.peak_bytes < e2e.peak_bytes
    assert local.saved_peak_bytes < e2e.saved_peak_bytes
    # The counted saved activations are part of what the allocator held at the peak.
    assert e2e.saved_peak_bytes <= e2e.peak_bytes
