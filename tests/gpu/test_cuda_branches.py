"""Every CUDA-only branch of contsup, run on the CPU against the recording fakes of `fake_cuda` (conftest.py).

Each test names the branch it runs; docs/method.md ("On a GPU") lists them. Together with the `meta`-device
runs of test_device_leak.py they are what can be checked of the CUDA paths without a GPU.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from tests.conftest import cli_error, tiny_net
from tests.gpu.conftest import no_cuda_moves

from contsup.config import PipelineConfig, RunConfig, TrainConfig
from contsup.device import activate, resolve_device
from contsup.distributed.comm import wait_on_host
from contsup.distributed.rank import pick_device
from contsup.distributed.syncbn import SyncBatchNorm, sync_batchnorm
from contsup.errors import ContsupError
from contsup.memory import measure_peak
from contsup.method.local_step import autocast
from contsup.profile.runner import machine, machine_memory
from contsup.train.peak import peak_memory, reset_peak
from contsup.train.steps import LocalStep
from contsup.train.trainer import Loaders, Trainer

CUDA1 = torch.device("cuda", 1)


@pytest.mark.quick
@pytest.mark.parametrize("name,want", [("cuda", CUDA1), ("auto", CUDA1), ("cuda:0", torch.device("cuda", 0)),
                                       ("cpu", torch.device("cpu"))])
def test_every_named_device_is_indexed(fake_cuda, name, want):
    """`cuda` and `auto` are the current GPU with its index: torch.cuda.set_device refuses a bare `cuda`."""
    device = resolve_device(name)
    assert device == want and (device.type != "cuda" or device.index is not None)


def test_a_gpu_this_machine_lacks_is_one_line(fake_cuda, capsys):
    with pytest.raises(ContsupError, match="2 CUDA device"):
        resolve_device("cuda:2")
    line = cli_error(capsys, ["train", "--data", "synthetic", "--device", "cuda:7", "--dry-run"])
    assert "cuda:7" in line


def test_no_gpu_at_all_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "no CUDA device" in cli_error(capsys, ["train", "--data", "synthetic", "--device", "cuda", "--dry-run"])


def test_activate_sets_the_indexed_device_and_the_fast_kernels(fake_cuda):
    assert activate(torch.device("cuda")) == CUDA1
    assert fake_cuda.calls == [("set_device", CUDA1)]
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32


def test_activate_leaves_the_cpu_alone(fake_cuda):
    assert activate(torch.device("cpu")) == torch.device("cpu")
    assert fake_cuda.calls == [] and not torch.backends.cudnn.benchmark


def test_the_default_device_survives_the_trainer(fake_cuda, monkeypatch, batch):
    """The crash of `contsup train` with `--device auto`/`cuda` before the first batch: a `Trainer` (and its
    `LocalStep`) on `cuda` makes the indexed device current."""
    no_cuda_moves(monkeypatch)
    cfg = TrainConfig(device="cuda", batch_size=8, progress=False)
    trainer = Trainer(LocalStep.of(tiny_net(2), cfg), Loaders([batch], [batch]), cfg)
    assert trainer.device == CUDA1 and trainer.step.device == CUDA1
    assert ("set_device", CUDA1) in fake_cuda.calls
    step = LocalStep(tiny_net(2), torch.device("cuda"))  # the Python API's bare device
    assert step.device == CUDA1


def test_the_dry_run_names_the_indexed_device(fake_cuda, capsys):
    from contsup.cli import main

    assert main(["train", "--data", "synthetic", "--batch-size", "64", "--device", "auto", "--dry-run"]) == 0
    assert "device: cuda:1" in capsys.readouterr().out


def test_bf16_autocast_on_cuda(fake_cuda):
    amp = autocast(CUDA1, True)
    assert isinstance(amp, torch.autocast) and amp.device == "cuda" and amp.fast_dtype == torch.bfloat16
    assert amp._enabled


def test_a_gpu_without_bf16_is_refused_in_one_line(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    no_cuda_moves(monkeypatch)
    with pytest.raises(ContsupError, match="bfloat16"):
        LocalStep(tiny_net(2), torch.device("cuda"), bf16=True)


def test_measure_peak_resets_and_reads_the_allocator_around_the_work(fake_cuda):
    _, peak = measure_peak(lambda: fake_cuda.record("work"), CUDA1)
    assert fake_cuda.names() == ["synchronize", "reset_peak_memory_stats", "memory_allocated", "work",
                                 "synchronize", "max_memory_allocated"]
    assert all(arg == CUDA1 for name, arg in fake_cuda.calls if name != "work")
    assert peak.peak_bytes == 250 and peak.method == "cuda max_memory_allocated"


def test_a_runs_peak_window_and_reading(fake_cuda):
    reset_peak(CUDA1)
    assert peak_memory(CUDA1) == (350.0, "cuda max_memory_allocated")
    assert fake_cuda.calls == [("reset_peak_memory_stats", CUDA1), ("max_memory_allocated", CUDA1)]


def test_profile_reads_the_gpus_memory_and_name(fake_cuda):
    assert machine_memory(CUDA1) == 80 * 2**30 and fake_cuda.calls == [("get_device_properties", CUDA1)]
    assert machine()["cuda"] == "Fake GPU"


def _rank_env(monkeypatch, local_world: int) -> None:
    monkeypatch.setitem(os.environ, "LOCAL_WORLD_SIZE", str(local_world))


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_a_pipeline_rank_gets_its_own_gpu_and_nccl(fake_cuda, monkeypatch, device):
    _rank_env(monkeypatch, 2)
    cfg = RunConfig(train=TrainConfig(device=device))
    backend, compute, comm = pick_device(cfg, "auto", 1)
    assert (backend, compute, comm) == ("nccl", CUDA1, CUDA1)
    assert fake_cuda.calls == [("set_device", CUDA1)] and torch.backends.cudnn.benchmark


def test_gloo_on_gpus_sends_through_the_host(fake_cuda, monkeypatch):
    _rank_env(monkeypatch, 1)
    backend, compute, comm = pick_device(RunConfig(train=TrainConfig(device="cuda")), "gloo", 0)
    assert (backend, compute, comm) == ("gloo", torch.device("cuda", 0), torch.device("cpu"))


@pytest.mark.parametrize("local_world,device,match", [(3, "cuda", "3 ranks on this node"),
                                                      (2, "cuda:0", "2 ranks on this node")])
def test_ranks_never_share_a_gpu_silently(fake_cuda, monkeypatch, local_world, device, match):
    _rank_env(monkeypatch, local_world)
    with pytest.raises(ContsupError, match=match):
        pick_device(RunConfig(train=TrainConfig(device=device)), "auto", 0)


def test_nccl_without_gpus_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ContsupError, match="nccl needs CUDA"):
        pick_device(RunConfig(train=TrainConfig(device="cpu"), pipeline=PipelineConfig(backend="nccl")), "nccl", 0)


@pytest.mark.parametrize("backend,kind", [("nccl", torch.nn.SyncBatchNorm), ("gloo", SyncBatchNorm)])
def test_every_batchnorm_of_a_stage_is_synchronised(backend, kind):
    """Both kinds of BatchNorm a network holds (2d in units and conv heads, 1d in AugLocal heads of depth <= 1)."""
    part = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    sync_batchnorm(part, group=None, backend=backend)  # type: ignore[arg-type]
    assert isinstance(part[1], kind) and isinstance(part[4], kind)


class FakeWork:
    """A dist.Work whose wait is recorded."""

    def __init__(self, fake, name: str) -> None:
        self.fake, self.name = fake, name

    def wait(self) -> bool:
        self.fake.record("wait", self.name)
        return True


@pytest.mark.parametrize("comm", ["cuda:1", "cpu"])
def test_the_inflight_bound_waits_on_the_host(fake_cuda, comm):
    """NCCL's wait only orders the CUDA stream: the host then synchronises it; gloo's wait blocks already."""
    wait_on_host([FakeWork(fake_cuda, "header"), FakeWork(fake_cuda, "h")], torch.device(comm))
    want = [("wait", "header"), ("wait", "h")]
    if comm.startswith("cuda"):
        want += [("current_stream", CUDA1), ("stream.synchronize", CUDA1)]
    assert fake_cuda.calls == want


@pytest.mark.parametrize("comm,flushed", [("cuda:1", True), ("cpu", False)])
def test_nccl_runs_one_communicator_at_a_time(fake_cuda, monkeypatch, comm, flushed):
    """A stage with replicas finishes its sends before the gradient all-reduce on NCCL (distributed/pipeline.py)."""
    import torch.distributed as dist

    from contsup.distributed import pipeline
    from contsup.distributed.comm import Link, Message
    from contsup.distributed.stage import Stage
    from contsup.distributed.topology import Topology

    monkeypatch.setattr(Link, "send", lambda self, msg, dst: fake_cuda.record("send", msg.kind))
    monkeypatch.setattr(Link, "flush", lambda self: fake_cuda.record("flush"))
    monkeypatch.setattr(dist, "all_reduce", lambda t, group=None, **kw: fake_cuda.record("all_reduce", group))
    net = tiny_net(4)
    topo = Topology.build(world=4, replicas=2, rank=0)  # stage 0 of replica 0, 2 stages
    stage_group = SimpleNamespace(name="stage 0")
    step = pipeline.PipelineStep(net, Stage(net, range(2)), topo, pipeline.Groups(None, stage_group),
                                 torch.device("cpu"), torch.device(comm), inflight=2)
    x = torch.randn(4, 3, 16, 16)
    step.train(Message(0, x, {0: x}, torch.randint(0, 10, (4,))))
    order = fake_cuda.names()
    assert order == (["send", "flush", "all_reduce"] if flushed else ["send", "all_reduce"])
    assert fake_cuda.calls[-1] == ("all_reduce", stage_group)


class Clock:
    """Records `synchronize(device)` and clock readings of one module, in order."""

    def __init__(self, monkeypatch, module) -> None:
        import time

        self.events: list[str] = []
        self.devices: set[torch.device] = set()
        monkeypatch.setattr(module, "synchronize", self.sync)
        monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=self.clock))
        self._now = time.perf_counter

    def sync(self, device: torch.device) -> None:
        self.events.append("sync")
        self.devices.add(device)

    def clock(self) -> float:
        self.events.append("clock")
        return self._now()


def test_profile_synchronises_around_every_timed_step(monkeypatch):
    from contsup.profile import runner

    clock = Clock(monkeypatch, runner)
    cfg = runner.ProfileConfig(arch="resnet20", batch_size=4, input_shape=(3, 16, 16), steps=3, warmup=1,
                               memory=False, flops=False, device="cpu")
    runner.profile_one(cfg, 4, "R1E")
    assert clock.events == ["sync", "clock", "sync", "clock"] * 3 and clock.devices == {torch.device("cpu")}


def test_profile_measures_the_peak_afresh_for_every_row(monkeypatch):
    from contsup.profile import runner

    seen = []
    real = runner.measure_peak
    monkeypatch.setattr(runner, "measure_peak", lambda fn, device: seen.append(device) or real(fn, device))
    cfg = runner.ProfileConfig(arch="resnet20", modules=(1, 4), contexts=("R1E",), batch_size=4,
                               input_shape=(3, 16, 16), steps=1, warmup=1, flops=False, device="cpu")
    rows = runner.run_profile(cfg)
    assert len(rows) == 2 and seen == [torch.device("cpu")] * 2  # measure_peak resets per call (above)


def test_an_epochs_time_covers_its_kernels(monkeypatch, batch):
    from contsup.train import trainer as trainer_module

    cfg = TrainConfig(epochs=1, batch_size=8, progress=False, device="cpu")
    trainer = Trainer(LocalStep.of(tiny_net(2), cfg), Loaders([batch] * 3, [batch]), cfg)
    clock = Clock(monkeypatch, trainer_module)
    trainer.train_epoch()
    assert clock.events == ["sync", "clock", "sync", "clock"] and clock.devices == {torch.device("cpu")}


def test_stage_costs_synchronise_around_every_module(monkeypatch):
    from contsup.distributed import stage
    from contsup.method.objective import Targets

    clock = Clock(monkeypatch, stage)
    net = tiny_net(4)
    x = torch.randn(4, 3, 16, 16)
    costs = stage.measure_costs(net, x, Targets(torch.randint(0, 10, (4,)), None), repeats=1)
    assert len(costs) == 4 and clock.events == ["sync", "clock", "sync", "clock"] * 4 * 2
