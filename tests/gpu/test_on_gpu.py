"""The CUDA paths for real: run by `make gpu-check` on a machine with a GPU, skipped elsewhere (marker `cuda`)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_net, train_end_to_end_and_k1

from contsup.config import TrainConfig
from contsup.data import SyntheticOptions, load_dataset
from contsup.data.loader import DeviceLoader
from contsup.device import resolve_device
from contsup.memory import measure_peak
from contsup.method import local_step
from contsup.models import resnet
from contsup.train.checkpoint import load_checkpoint
from contsup.train.steps import LocalStep
from contsup.train.trainer import Loaders, Trainer, evaluate

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_auto_is_the_current_gpu_with_its_index():
    device = resolve_device("auto")
    assert device.type == "cuda" and device.index == torch.cuda.current_device()


def test_k1_equals_end_to_end_on_the_gpu():
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # exact float32 here
    torch.manual_seed(0)
    plain = resnet(20, 3, 10).cuda()
    x, y = torch.randn(8, 3, 16, 16, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    want, got = train_end_to_end_and_k1(plain, torch.zeros(1, 3, 16, 16, device="cuda"), x, y)
    for name, p in want.items():
        torch.testing.assert_close(got[name], p, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("settings", [{"context": "R1E"}, {"context": "R0", "head": "auglocal"},
                                      {"context": "E", "man_momentum": 0.9}, {"context": "R1E", "head_patches": 2}])
def test_a_bf16_channels_last_step_on_the_gpu(settings):
    step = LocalStep(tiny_net(4, **settings), torch.device("cuda"), bf16=True, channels_last=True)
    losses, logits, y = step.train((torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))))
    assert losses.is_cuda and logits.is_cuda and torch.isfinite(losses).all()


def test_the_gpu_peak_agrees_with_the_cpu_allocators():
    """One local step's peak from CUDA's allocator against the CPU allocator's events (same step, same batch)."""
    peaks = {}
    for name in ("cpu", "cuda"):
        net = tiny_net(4).to(name)
        x, y = torch.randn(32, 3, 16, 16, device=name), torch.randint(0, 10, (32,), device=name)
        local_step(net, x, y)  # warm-up: cuDNN workspaces, lazy state
        peaks[name] = measure_peak(lambda net=net, x=x, y=y: local_step(net, x, y), torch.device(name))[1].peak_bytes
    assert 0.5 < peaks["cuda"] / peaks["cpu"] < 2.0, peaks


def test_a_run_on_the_gpu_writes_a_checkpoint_that_reads_anywhere(tmp_path):
    data = load_dataset("synthetic", synthetic=SyntheticOptions(train=128, test=64))
    device = resolve_device("cuda")
    train = DeviceLoader(data.train, data.info, 32, device, train=True)
    test = DeviceLoader(data.test, data.info, 32, device)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, progress=False, device="cuda", bf16=True, channels_last=True)
    summary = Trainer(LocalStep.of(tiny_net(4), cfg), Loaders(train, test), cfg, tmp_path / "run").fit()
    assert summary["device"].startswith("cuda:") and summary["step_peak_memory_bytes"] > 0
    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert all(t.device.type == "cpu" for t in payload["model"].values())
    net = tiny_net(4)
    net.load_state_dict(payload["model"])
    assert evaluate(net.to(device), test, bf16=True, channels_last=True)["images"] == 64
