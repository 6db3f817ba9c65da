"""Device leaks: whole training, evaluation, checkpoint, profile and pipeline-stage steps on the `meta` device.

A tensor made on the CPU where the run's device was meant (a `torch.zeros(n)` without `device=`) meets the
network's tensors and fails here exactly as it would on a GPU ("Tensor on device cpu is not on the expected
device meta"). Meta tensors hold no data: host reads (`contsup.device.to_host`, the loops' only way to read a
device tensor) return zeros of the right shape, so the loops run to the end.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from tests.conftest import tiny_net

import contsup.device
from contsup.config import TrainConfig
from contsup.device import to_host
from contsup.method.local_step import clip_module_grads
from contsup.models import build_arch
from contsup.train.checkpoint import load_checkpoint
from contsup.train.optim import make_optimizer
from contsup.train.steps import LocalStep
from contsup.train.trainer import Loaders, Trainer, evaluate_step

META = torch.device("meta")


@pytest.fixture
def meta_host(monkeypatch):
    """`to_host` of a meta tensor is zeros on the CPU, -1 for integers (the finiteness watch's "never"); every
    module that imported it sees the fake."""
    def fake(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            return t.cpu()
        return torch.full(t.shape, 0 if t.is_floating_point() else -1, dtype=t.dtype)

    for module in [m for name, m in sys.modules.items() if name.startswith("contsup")]:
        if getattr(module, "to_host", None) is to_host:
            monkeypatch.setattr(module, "to_host", fake)
    assert contsup.device.to_host is fake


SETTINGS = [
    pytest.param({"context": "R1E"}, id="R1E"),
    pytest.param({"context": "R2E", "lean_context": False}, id="R2E-straightforward"),
    pytest.param({"context": "E", "image_encoder": "pooled"}, id="E-pooled"),
    pytest.param({"context": "R0", "head": "auglocal", "aux_depth": 1}, id="auglocal"),
    pytest.param({"context": "R1E", "man_momentum": 0.9}, id="MAN"),
    pytest.param({"context": "R1E", "head_patches": 2}, id="PFF"),
    pytest.param({"context": "R1E", "recon": "5,1,0,1"}, id="recon"),
    pytest.param({"context": "R1E", "checkpoint_segments": 2}, id="checkpointed"),
]


def batches(n: int = 2, size: int = 16):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, size, size, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_a_local_step_and_update_stay_on_the_device(settings, channels_last):
    net = tiny_net(4, **settings)
    step = LocalStep(net, META, channels_last=channels_last, pixels=(lambda x: x) if net.needs_pixels else None)
    opt = make_optimizer(step.named_parameters(), TrainConfig(lr=0.1))
    losses, logits, y = step.train(batches(1)[0])
    clip_module_grads(step.net, step.modules, 1.0)
    opt.step()  # MAN's copies follow it (a post-step hook)
    assert losses.device == logits.device == y.device == META
    assert all(p.device == META for p in step.net.parameters()) and all(b.device == META for b in step.net.buffers())


def test_a_token_model_steps_on_the_device():
    from contsup.config import LocalConfig
    from contsup.method import LocalNetwork

    net = LocalNetwork(build_arch("vit-mini-p7", 1, 10, 28), LocalConfig(modules=4, context="R1E", head="meantoken"),
                       torch.zeros(1, 1, 28, 28))
    step = LocalStep(net, META)
    losses, _, _ = step.train((torch.randn(2, 1, 28, 28), torch.randint(0, 10, (2,))))
    assert losses.device == META


@pytest.mark.parametrize("settings", [{"context": "R1E"}, {"context": "R0", "head": "auglocal", "aux_depth": 1},
                                      {"context": "R1E", "man_momentum": 0.9}])
def test_training_and_evaluation_run_whole_on_the_device(meta_host, settings):
    """`Trainer.fit`: the schedule, the epoch's statistics, the finiteness watch, evaluation, the step peak."""
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.1, progress=False, device="cpu")
    trainer = Trainer(LocalStep(tiny_net(4, **settings), META), Loaders(batches(), batches(1)), cfg)
    summary = trainer.fit()
    assert summary is not None and len(trainer.history) == 2
    assert trainer.history[-1]["test_images"] == 0  # the fake host read: zeros
    assert all(p.device == META for p in trainer.net.parameters())


def test_evaluation_stays_on_the_device(meta_host):
    step = LocalStep(tiny_net(4), META, channels_last=True)
    assert evaluate_step(step, batches())["images"] == 0


def test_a_checkpoint_is_written_from_the_host_and_read_onto_the_device(meta_host, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.1, progress=False, device="cpu")
    trainer = Trainer(LocalStep(tiny_net(4), META), Loaders(batches(), batches(1)), cfg, tmp_path / "run")
    trainer.fit()
    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # on the CPU: written from the host
    assert payload["model"] and payload["optimizer"]["state"]
    again = Trainer(LocalStep(tiny_net(4), META), Loaders(batches(), batches(1)), replace(cfg, epochs=2),
                    tmp_path / "run")
    again.resume(tmp_path / "run" / "checkpoint.pt")
    assert again.epoch == 1 and all(p.device == META for p in again.net.parameters())
    state = [v for s in again.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert state and all(v.device == META for v in state)


def test_profile_steps_on_the_device(monkeypatch):
    from contsup.profile import runner

    monkeypatch.setattr(runner, "resolve_device", lambda name: META)
    # the lower bound runs a copy of the network on the host by design (profile/bound.py), not on the device
    monkeypatch.setattr(runner, "lower_bound", lambda net, batch, buffers: SimpleNamespace(total=1))
    cfg = runner.ProfileConfig(arch="resnet20", batch_size=4, input_shape=(3, 16, 16), steps=1, warmup=1,
                               memory=False, flops=False, channels_last=True)
    row = runner.profile_one(cfg, 4, "R1E")
    assert row.device == "meta" and row.step_ms >= 0


def test_a_pipeline_stage_steps_on_the_device(meta_host, monkeypatch):
    """Stage 1 of 2 receives a message (buffers made on the transfer device, moved to the compute device),
    runs its modules' local steps and sends nothing on (it is last)."""
    import torch.distributed as dist

    from contsup.distributed import pipeline
    from contsup.distributed.comm import TRAIN
    from contsup.distributed.stage import Stage, boundary_sources
    from contsup.distributed.topology import Topology

    net = tiny_net(4, context="R2E").to(META, memory_format=torch.channels_last)  # as launch.py places it
    sent: list[torch.Tensor] = []

    class Done:
        def wait(self) -> bool:
            return True

    def irecv(t: torch.Tensor, src: int, group=None, tag: int = 0) -> Done:
        if tag == 0:  # the header: kind, batch, then every float tensor's dtype index (float32)
            t.zero_()
            t[0], t[1] = TRAIN, 4
        sent.append(t)
        return Done()

    monkeypatch.setattr(dist, "irecv", irecv)
    step = pipeline.PipelineStep(net, Stage(net, range(2, 4)), Topology.build(2, 1, 1), pipeline.Groups(None, None),
                                 META, META, inflight=2, channels_last=True)
    msg = next(iter(step.loader(None, train=True)))
    assert len(msg.sources) == len(boundary_sources(net, 2))
    losses, logits, y = step.train(msg)
    assert losses.device == logits.device == META and all(t.device == META for t in sent[1:])
