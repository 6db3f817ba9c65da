import json

import pytest
import torch
from tests.conftest import tiny_net

from contsup.data import DeviceLoader, SyntheticOptions, load_dataset
from contsup.errors import ContsupError
from contsup.train import Loaders, LocalStep, TrainConfig, Trainer, evaluate, load_checkpoint, save_checkpoint
from contsup.train.peak import step_peak

OPTS = SyntheticOptions(channels=3, size=16, num_classes=10, train=256, test=128, seed=0)


def make_trainer(mode="R1E", modules=4, epochs=3, out=None, local=None, subset_loader=None, **kw):
    data = load_dataset("synthetic", synthetic=OPTS)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, warmup_epochs=0, device="cpu", progress=False, **kw)
    train = DeviceLoader(data.train, data.info, cfg.batch_size, "cpu", train=True, seed=cfg.seed)
    test = DeviceLoader(data.test, data.info, 128, "cpu")
    step = LocalStep.of(tiny_net(modules, mode, **(local or {})), cfg, train.denormalize)
    return Trainer(step, Loaders(train, test, test_subset=subset_loader), cfg, out)


@pytest.mark.parametrize("mode,modules", [("R0", 4), ("E", 4), ("R1", 4), ("R1E", 4), ("R2E", 3), ("R0", 1)])
def test_training_lowers_loss(mode, modules):
    trainer = make_trainer(mode, modules, epochs=4)
    x, y = next(iter(trainer.loaders.test))
    before = evaluate(trainer.net, trainer.loaders.test)["loss"]
    trainer.fit()
    first, last = trainer.history[0], trainer.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert evaluate(trainer.net, trainer.loaders.test)["loss"] < before
    assert len(first["local_losses"]) == modules - 1


@pytest.mark.parametrize("local,train", [
    ({}, {}),
    ({}, {"context_lr_scale": 0.5}),  # two parameter groups (their checkpoint was refused before)
    ({}, {"optimizer": "adamw"}),  # AdamW's moments and step counts, in four named groups
    ({"man_momentum": 0.9, "head_patches": 2}, {}),  # MAN's momentum copies move after every step
    ({"head": "auglocal", "recon": "1,1,1,1"}, {}),
])
def test_resume_equals_uninterrupted(tmp_path, local, train):
    """Train 3 epochs; or 2, then resume from the checkpoint for the third: the same weights bit for bit."""
    full = make_trainer(epochs=3, out=tmp_path / "a", local=local, **train)
    full.fit()
    part = make_trainer(epochs=3, out=tmp_path / "b", local=local, **train)
    part.fit(until=2)
    resumed = make_trainer(epochs=3, out=tmp_path / "b", local=local, **train)
    resumed.resume(tmp_path / "b" / "checkpoint.pt")
    assert resumed.epoch == 2
    resumed.fit()
    a, b = full.net.state_dict(), resumed.net.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["test_error"] == full.history[-1]["test_error"]


def test_summary_and_run_folder(tmp_path):
    trainer = make_trainer(epochs=3, out=tmp_path)
    summary = trainer.fit()
    errors = [r["test_error"] for r in trainer.history]
    assert summary["final_test_error"] == errors[-1]
    assert summary["best_test_error_selected_on_test"] == min(errors)
    assert summary["best_epoch"] == errors.index(min(errors)) + 1
    assert summary["images_per_s"] == pytest.approx(trainer.images / trainer.train_time)
    assert trainer.images == 3 * (256 // 64) * 64  # every training image of every epoch, the last batch dropped
    # The measured step memory of this network at its batch size: what `step_peak` measures on its own.
    alone = step_peak(trainer.net, 64, torch.device("cpu"))
    assert summary["step_peak_memory_bytes"] == alone.peak_bytes > 0
    assert trainer.history[-1]["train_loss_end"] > 0 and len(trainer.history[-1]["local_losses_end"]) == 3
    assert set(summary["params"]) == {"backbone", "heads", "decoders", "context", "frozen", "total"}
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 3
    assert not list(tmp_path.glob("*tmp"))


def test_eval_every_and_a_seeded_test_subset_then_the_full_test_set_last():
    from contsup.data.split import seeded_subset

    data = load_dataset("synthetic", synthetic=OPTS)
    subset = DeviceLoader(seeded_subset(data.test, 32, 0), data.info, 128, "cpu")
    trainer = make_trainer(epochs=3, eval_every=2, eval_subset=32, subset_loader=subset)
    summary = trainer.fit()
    first, second, third = trainer.history
    assert "test_error" not in first and "val_error" not in first
    assert second["test_subset"] and second["test_images"] == 32
    assert "test_subset" not in third and third["test_images"] == 128
    assert summary["final_test_set"] == "full" and summary["final_test_images"] == 128
    assert summary["best_epoch"] == 3  # the best epoch among those evaluated on the full test set


def test_the_bar_reads_the_losses_from_the_first_steps():
    assert [n for n in range(1, 61) if make_trainer().log_now(n)] == [1, 2, 4, 8, 16, 20, 40, 60]


def test_each_epoch_keeps_a_curve_of_slice_means():
    trainer = make_trainer(epochs=2)
    trainer.CURVE_POINTS = 2  # 4 steps an epoch: 2 slices of 2 steps
    trainer.fit()
    first, second = trainer.history
    assert [p[0] for p in first["curve"] + second["curve"]] == [0.5, 1.0, 1.5, 2.0]
    assert all(len(p) == 1 + 4 for p in first["curve"])  # one mean loss per module
    for row in (first, second):  # equal slices: their mean is the epoch's mean
        assert sum(p[-1] for p in row["curve"]) / 2 == pytest.approx(row["train_loss"], abs=1e-3)


def test_eval_subset_needs_its_loader():
    with pytest.raises(ContsupError, match="eval_subset needs the loader"):
        make_trainer(eval_subset=32)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ContsupError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ContsupError, match="not a contsup checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ContsupError, match="not a torch zip archive"):
        load_checkpoint(tmp_path / "junk.pt")
    state = make_trainer(epochs=1).state()
    save_checkpoint(tmp_path / "ok.pt", {**state, "epoch": 3})
    assert load_checkpoint(tmp_path / "ok.pt")["epoch"] == 3


def test_tensorboard_log_in_the_run_folder(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_trainer(modules=3, epochs=2, out=tmp_path, tensorboard=True).fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss/module_01", "loss/module_03", "error/test", "lr"} <= set(events.Tags()["scalars"])
    assert [s.step for s in events.Scalars("error/test")] == [1, 2]


def test_tensorboard_needs_a_run_folder():
    with pytest.raises(ContsupError, match="run folder"):
        make_trainer(epochs=1, tensorboard=True).fit()


@pytest.mark.parametrize("clip,moves", [(0.0, True), (1e-9, False)])
def test_clip_grad_bounds_every_update(clip, moves):
    """--clip-grad reaches the optimizer: with a tiny bound (and no weight decay) the weights barely move."""
    trainer = make_trainer("R1E", 4, epochs=1, clip_grad=clip, weight_decay=0.0)
    before = [p.detach().clone() for p in trainer.net.parameters()]
    trainer.fit()
    change = max(float((p.detach() - b).abs().max()) for p, b in zip(trainer.net.parameters(), before, strict=True))
    assert (change > 1e-3) if moves else (change < 1e-6)


def test_history_records_the_rate_at_the_epoch_ends():
    trainer = make_trainer("R0", 2, epochs=2)  # per-step cosine decay: the rate falls within each epoch
    trainer.fit()
    first = trainer.history[0]
    assert first["lr"] == pytest.approx(trainer.schedule.lr(0, 0)) and first["lr"] > first["lr_end"]
    assert trainer.history[-1]["lr_end"] == pytest.approx(trainer.optimizer.param_groups[0]["lr"])


class Elsewhere:
    """A batch tensor as if on another device: `evaluate` must move it to the network's device itself."""

    moved: list[str] = []

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t

    def to(self, device, non_blocking=False):
        Elsewhere.moved.append(str(device))
        return self.t


def test_evaluate_moves_batches_and_equals_the_trainer_in_channels_last():
    """The public `evaluate` and the Trainer's evaluation are one path: the same error and loss, in
    channels_last; batches from elsewhere are moved to the network's device."""
    trainer = make_trainer("R1E", 3, epochs=1, channels_last=True)
    trainer.fit()
    assert trainer.net.blocks[0][0][0].weight.is_contiguous(memory_format=torch.channels_last)
    inside = trainer.evaluate(trainer.loaders.test)
    Elsewhere.moved = []
    batches = [(Elsewhere(x), Elsewhere(y)) for x, y in trainer.loaders.test]
    outside = evaluate(trainer.net, batches, channels_last=True)
    assert outside == inside
    assert Elsewhere.moved == ["cpu"] * 2 * len(batches)
