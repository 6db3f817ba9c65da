"""The one training loop, apart from the model: schedule, seeding, steps, evaluation, metrics, checkpoints.

`Trainer.fit` is the same for one process and for every rank of a pipeline; only the `Step` differs
(`contsup.train.steps`: `LocalStep` runs every module in this process, `PipelineStep` one pipeline stage).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from contsup.checks import check_train, check_used
from contsup.config import DataConfig, RunConfig, TrainConfig
from contsup.data.specs import DatasetInfo
from contsup.device import synchronize, to_host
from contsup.errors import ContsupError, check_int
from contsup.files import atomic_write, write_json
from contsup.memory import PeakMemory
from contsup.method.local_step import clip_module_grads
from contsup.method.network import LocalNetwork, num_classes
from contsup.train.checkpoint import save_checkpoint
from contsup.train.guard import FiniteWatch, check_row
from contsup.train.optim import make_optimizer
from contsup.train.peak import peak_memory, reset_peak, step_peak
from contsup.train.progress import TAIL, collapse_note, epoch_line, legend, postfix
from contsup.train.runfolder import (
    CHECKPOINT,
    METRICS,
    RUN_FILES,
    SUMMARY,
    check_checkpoint_fits,
    hold_run_folder,
    open_run_folder,
    writing,
)
from contsup.train.schedule import make_schedule
from contsup.train.steps import LocalStep, Step
from contsup.train.tensorboard import TensorBoardLog


@torch.no_grad()
def evaluate_step(step: Step, loader: Iterable, bar: str | None = None) -> dict[str, float]:
    """Error (%) and mean cross entropy of a step's inference pass over a loader, summed over every process.

    The one evaluation path: training, `contsup eval` and `evaluate` all run it. The step moves each batch to
    its device and memory format and runs the forward under its autocast.
    """
    was_training = step.net.training
    step.net.eval()
    # wrong, total, loss sum, labels out of range, then the predictions of each class
    counts = torch.zeros(4 + num_classes(step.net.objectives[-1]), dtype=torch.float64, device=step.device)
    for batch in tqdm(loader, desc=bar, leave=False, disable=bar is None, dynamic_ncols=True):
        logits, y = step.infer(batch)
        if logits is not None:
            count_errors(counts, logits.float(), y)
    step.end_phase()
    step.net.train(was_training)
    return error_and_loss(step.reduce(to_host(counts)))  # the one host read of the pass


def evaluate(net: LocalNetwork, loader: Iterable, bf16: bool = False, channels_last: bool = False,
             bar: str | None = None) -> dict[str, float]:
    """Error (%) and mean cross entropy of a network's inference pass over (x, y) batches from anywhere.

    Runs on the network's device; batches are moved there (in channels_last when asked for, under bf16
    autocast with `bf16`). A progress bar named `bar` is shown when given.
    """
    return evaluate_step(LocalStep(net, next(net.parameters()).device, bf16, channels_last), loader, bar)


def count_errors(counts: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
    """Add a batch's (wrong, total, summed cross entropy, labels outside the classes) to `counts`, on the device
    (no host sync: a label outside the classes is counted, and refused after the pass)."""
    outside = (y < 0) | (y >= logits.shape[1])
    counts[0] += (logits.argmax(1) != y).sum()
    counts[1] += y.numel()
    counts[2] += F.cross_entropy(logits, y.clamp(0, logits.shape[1] - 1), reduction="sum")
    counts[3] += outside.sum()
    predicted = logits.argmax(1)
    counts[4:].index_add_(0, predicted, torch.ones_like(predicted, dtype=counts.dtype))  # bincount would sync


def error_and_loss(counts: torch.Tensor) -> dict[str, float]:
    """Error (%) and mean loss from summed (wrong, total, loss, labels outside the classes) counts."""
    if counts[3] > 0:
        raise ContsupError(f"{int(counts[3])} of {int(counts[1])} evaluated labels lie outside the network's classes "
                           "(0 to its number of classes - 1): check the loader's labels")
    total = max(float(counts[1]), 1.0)
    return {"error": 100.0 * float(counts[0]) / total, "loss": float(counts[2]) / total, "images": int(counts[1]),
            "top_class_share": float(counts[4:].max()) / total if len(counts) > 4 else 0.0}


@dataclass
class Loaders:
    """The batches a run reads: training and test, and optionally validation and the test subset.

    With `eval_subset`, `test_subset` holds those seeded test images (`contsup.run.make_loaders`): epochs
    before the last evaluate on it, the last on `test`. `steps_per_epoch` is `len(train)` unless given (a
    pipeline's later stages receive their batches and cannot count them).
    """

    train: Iterable
    test: Iterable
    val: Iterable | None = None
    test_subset: Iterable | None = None
    steps_per_epoch: int | None = None  # None: len(train)

    def __post_init__(self) -> None:
        if self.steps_per_epoch is None:
            if not hasattr(self.train, "__len__"):
                raise ContsupError("the training loader has no length: give Loaders(steps_per_epoch=...), the "
                                   "batches it yields an epoch")
            self.steps_per_epoch = len(self.train)  # type: ignore[arg-type]


class Trainer:
    """Trains the network of a `Step` on `loaders` as `config` says; checkpoints and metrics go to `run_folder`.

    The step says where the modules train: `LocalStep.of(net, config)` every module in this process, a
    pipeline rank its `PipelineStep` (and the loaders of its stage). The batch size is the training loader's
    (its `batch_size`), whatever `config` says.

    A run folder is used as the command line uses it: one writer at a time (its lock is held while `fit`
    runs), a folder that holds a run is continued only through `resume`, and the checkpoint and summary
    hold `record`, what the run was (`run_record`; by default the Python API's: the network, `config` and
    the training loader's dataset) so that `contsup eval` and `contsup runs` read it.
    """

    LOG_EVERY = 20  # batches between progress-bar loss readings (each waits for the device); steps 1, 2, 4, 8, 16 too
    CURVE_POINTS = 8  # slices of each epoch whose mean losses the metrics row keeps (`curve`)

    def __init__(self, step: Step, loaders: Loaders, config: TrainConfig, run_folder: str | Path | None = None,
                 *, record: dict[str, Any] | None = None) -> None:
        batch = getattr(loaders.train, "batch_size", None)
        if isinstance(batch, int) and batch != config.batch_size:
            config = replace(config, batch_size=batch)  # the loader's batch trains: the step peak and records say so
        check_trainer(config, loaders.steps_per_epoch, step.net.config)  # the command line's checks, for the API too
        if config.eval_subset and loaders.test_subset is None:
            raise ContsupError("eval_subset needs the loader of its test images (Loaders(test_subset=...))")
        self.step, self.loaders, self.config = step, loaders, config
        self.net, self.device = step.net, step.device
        self.run_folder = Path(run_folder) if run_folder is not None else None
        self.record = record if record is not None else api_record(self.net, config, loaders.train)
        self.optimizer = make_optimizer(step.named_parameters(), config)
        self.schedule = make_schedule(config.schedule, config.lr, config.epochs, loaders.steps_per_epoch,
                                      config.warmup_epochs, config.warmup_steps, config.warmup_start_lr)
        self.epoch = 0
        self.step_memory: PeakMemory | None = None
        self.rank_step_peaks: list[int] | None = None  # ranks of a pipeline or baseline: each one's step peak
        self.history: list[dict[str, Any]] = []
        self.train_time = 0.0
        self.images = 0

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        """Everything needed to continue this run exactly (on the main process; None elsewhere)."""
        parts = self.step.checkpoint(self.optimizer)
        if parts is None:
            return None
        return {
            "epoch": self.epoch,
            **parts,
            "history": self.history,
            "train_time": self.train_time,
            "images": self.images,
            "train_config": asdict(self.config),
            "meta": self.record,
        }

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint written by a Trainer (one process or a pipeline)."""
        payload = self.step.read(Path(path))
        check_checkpoint_fits(self.net, payload, self.config, path, "this Trainer's network")
        self.step.restore(payload, self.optimizer)
        self.epoch = payload["epoch"]
        self.history = payload["history"]
        self.train_time = payload["train_time"]
        self.images = payload["images"]
        if self.run_folder is not None and self.step.main:
            rewrite_metrics(self.run_folder, self.history)

    # -- loop -------------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, Any]:
        """One epoch of local steps, the learning rate set by the schedule before each; metrics over every process."""
        if hasattr(self.loaders.train, "set_epoch"):
            self.loaders.train.set_epoch(self.epoch)
        torch.manual_seed(self.config.seed * 1000 + self.epoch)
        self.net.train()
        k_total = self.net.num_modules
        mods = self.step.modules
        trains = [o.trains for o in self.net.objectives]  # module 0 under HPFF's cascade has no head of its own
        # [loss sum per module..., correct, seen, batches]; each process fills its own modules' entries.
        stats = torch.zeros(k_total + 3, dtype=torch.float64, device=self.device)
        steps: list[torch.Tensor] = []  # each step's losses, for the means over the epoch's last quarter
        bar = tqdm(
            self.loaders.train, desc=f"epoch {self.epoch + 1}/{self.config.epochs}", leave=False,
            disable=not (self.config.progress and self.step.main), dynamic_ncols=True,
        )
        watch = FiniteWatch(k_total, self.device)
        synchronize(self.device)  # host sync: the epoch's clock starts when the device is idle
        start = time.perf_counter()
        for i, batch in enumerate(bar):
            self.schedule.apply(self.optimizer, self.epoch, i)
            self.optimizer.zero_grad(set_to_none=True)
            losses, logits, y = self.step.train(batch)
            if self.config.clip_grad:
                clip_module_grads(self.net, mods, self.config.clip_grad)
            self.optimizer.step()  # MAN's momentum copies follow it (a hook: contsup.method.heads.man)
            stats[mods.start:mods.stop] += losses.double()
            watch.update(mods, losses, i)
            steps.append(losses)
            if logits is not None:
                stats[k_total] += (logits.argmax(1) == y).sum()
                stats[k_total + 1] += y.numel()
                stats[k_total + 2] += 1
            if not bar.disable and self.log_now(i + 1):
                host = to_host(losses).tolist()  # host read, every LOG_EVERY steps
                bar.set_postfix(postfix(host, mods.stop == k_total, trains[mods.start:mods.stop]))
        self.step.end_phase()
        synchronize(self.device)  # host sync: the epoch's time covers its queued kernels
        stats, tail = self.step.reduce(to_host(stats)), self.step.reduce(self._tail_sums(steps))
        curve = self._curve(self.step.reduce(self._slice_sums(steps)))
        watch.check(self.step.reduce(to_host(watch.first), "max"), self.epoch + 1)
        seconds = float(self.step.reduce(torch.tensor([time.perf_counter() - start], dtype=torch.float64), "max"))
        batches, seen = max(float(stats[-1]), 1.0), float(stats[-2])
        first_lr, last_lr = self.schedule.lr(self.epoch, 0), self.schedule.lr(self.epoch, max(len(steps) - 1, 0))
        mean = (stats[:k_total] / batches).tolist()
        end = (tail[:k_total] / max(float(tail[k_total]), 1.0)).tolist()
        self.train_time += seconds
        self.images += int(seen)
        return {
            "lr": first_lr, "lr_end": last_lr,  # the rate at the epoch's first and last step
            "train_loss": mean[-1], "local_losses": mean[:-1],  # epoch means of each module's loss
            "train_loss_end": end[-1], "local_losses_end": end[:-1],  # the same over the epoch's last quarter
            "train_error": 100.0 * (1 - float(stats[-3]) / max(seen, 1.0)),
            "curve": curve,  # [epochs done at a slice's end, each module's mean loss over it], CURVE_POINTS an epoch
            "epoch_time": seconds, "images_per_s": seen / seconds if seconds > 0 else 0.0,
        }

    def log_now(self, step: int) -> bool:
        """Whether the progress bar reads the losses after this step (counted from 1): 1, 2, 4, 8, 16, 20, 40, ..."""
        return step % self.LOG_EVERY == 0 or (step < self.LOG_EVERY and step & (step - 1) == 0)

    def _slice_sums(self, steps: list[torch.Tensor]) -> torch.Tensor:
        """Per slice of the epoch's steps (CURVE_POINTS, fewer in short epochs): [loss sum per module..., steps]."""
        k_total, mods = self.net.num_modules, self.step.modules
        n = min(self.CURVE_POINTS, len(steps))
        out = torch.zeros(n, k_total + 1, dtype=torch.float64)
        for j in range(n):
            part = steps[j * len(steps) // n:(j + 1) * len(steps) // n]
            out[j, mods.start:mods.stop] = to_host(torch.stack(part).double().sum(0))
            if mods.stop == k_total:
                out[j, k_total] = len(part)
        return out

    def _curve(self, sums: torch.Tensor) -> list[list[float]]:
        """The epoch's slices as [epochs done at the slice's end, each module's mean loss over the slice]."""
        k_total = self.net.num_modules
        return [[round(self.epoch + (j + 1) / len(sums), 4),
                 *(round(v, 4) for v in (row[:k_total] / max(float(row[k_total]), 1.0)).tolist())]
                for j, row in enumerate(sums)]

    def _tail_sums(self, steps: list[torch.Tensor]) -> torch.Tensor:
        """[loss sum per module over the last quarter of the steps..., steps counted] (the last stage counts)."""
        k_total, mods = self.net.num_modules, self.step.modules
        n = max(1, round(len(steps) * TAIL)) if steps else 0
        tail = torch.zeros(k_total + 1, dtype=torch.float64)
        if steps:
            tail[mods.start:mods.stop] = to_host(torch.stack(steps[-n:]).double().sum(0))
        if mods.stop == k_total:
            tail[k_total] = n
        return tail

    def evaluate(self, loader: Iterable, split: str = "test") -> dict[str, float]:
        """Error (%) and mean cross entropy of the inference pass over a loader, over every process."""
        shown = self.config.progress and self.step.main
        return evaluate_step(self.step, loader, f"evaluating on the {split} set" if shown else None)

    def fit(self, until: int | None = None) -> dict[str, Any] | None:
        """Train to `config.epochs` (or stop after epoch `until`), checkpointing every epoch and evaluating every
        `config.eval_every` epochs and at the end (the last epoch of the run on the full test set).

        Then, in one process, measures the peak memory of one local step of this network at the run's
        batch size (on a copy, after the epochs so that the process peak excludes it; see `step_peak`),
        reported in the summary beside the process peak.
        Returns the summary on the main process, None on the other ranks of a pipeline.
        """
        with hold_run_folder(self.run_folder if self.step.main else None, reentrant=True):
            return self._fit(until)

    def _fit(self, until: int | None) -> dict[str, Any] | None:
        """`fit` with the run folder's lock held (on the main process)."""
        if self.run_folder is not None and self.step.main:
            self._check_new_run()
            open_run_folder(self.run_folder)
        board = self._tensorboard()
        if self.config.progress and self.step.main:
            tqdm.write(legend(self.net.num_modules))
        reset_peak(self.device)
        stop = self.config.epochs if until is None else min(until, self.config.epochs)
        while self.epoch < stop:
            row = {"epoch": self.epoch + 1, **self.train_epoch()}
            if row["epoch"] % self.config.eval_every == 0 or row["epoch"] == stop:
                if row["epoch"] == self.config.epochs:
                    self._say(f"epoch {row['epoch']}/{self.config.epochs} trained; evaluating on the full test set")
                self._evaluate_into(row)
            row["peak_memory_bytes"] = self._peak()
            check_row(row)  # before the checkpoint: the run folder keeps the last good epoch
            self.epoch += 1
            self.history.append(row)
            self._save(row)
            if board is not None:
                board.log(row)
        if board is not None:
            board.close()
        if (self.step_memory is None and isinstance(self.step, LocalStep) and self.step.micro_batches == 1
                and self.config.step_peak):  # step_peak measures a whole batch's step
            self._say(f"measuring the peak memory of one training step at batch {self.config.batch_size} on a copy of "
                      "the network (--no-step-peak skips it)")
            self.step_memory = step_peak(self.net, self.config.batch_size, self.device, self.step.bf16,
                                         self.step.format)
        elif self.rank_step_peaks is None and hasattr(self.step, "step_peak") and self.config.step_peak:
            self._say(f"measuring each rank's peak memory in one more training step at batch {self.config.batch_size} "
                      "(--no-step-peak skips it)")
            self._measure_rank_peaks()
        return self.summary() if self.step.main else None

    def _measure_rank_peaks(self) -> None:
        """Every rank's step peak (`PipelineStep.step_peak`), gathered on every rank (one all-reduce)."""
        peak = self.step.step_peak(self.config.batch_size)  # type: ignore[attr-defined]
        world = self.step.topo.world  # type: ignore[attr-defined]
        mine = torch.zeros(world, dtype=torch.float64)
        mine[self.step.topo.rank] = peak.peak_bytes  # type: ignore[attr-defined]
        self.rank_step_peaks = [int(v) for v in self.step.reduce(mine).tolist()]
        self.step_memory = PeakMemory(max(self.rank_step_peaks), peak.method + ", largest rank")

    def _say(self, line: str) -> None:
        """A line on what the run does next, on the main process, with or without progress bars."""
        if self.step.main:
            tqdm.write(line)

    def _check_new_run(self) -> None:
        """Refuse to start a run from epoch 0 in a folder that already holds one (`resume` continues it)."""
        assert self.run_folder is not None
        held = [name for name in RUN_FILES if os.path.lexists(self.run_folder / name)] if self.epoch == 0 else []
        if held:
            raise ContsupError(f"{self.run_folder} already holds a run ({', '.join(held)}): continue it with "
                               f"Trainer.resume('{self.run_folder / CHECKPOINT}'), or choose another run folder")

    def _evaluate_into(self, row: dict[str, Any]) -> None:
        """The epoch's validation and test errors into its row; the test subset before the run's last epoch."""
        if self.loaders.val is not None:
            row["val_error"] = self.evaluate(self.loaders.val, "validation")["error"]
        subset = self.config.eval_subset > 0 and row["epoch"] < self.config.epochs
        test = self.evaluate(self.loaders.test_subset if subset else self.loaders.test)  # type: ignore[arg-type]
        row["test_error"], row["test_loss"], row["test_images"] = test["error"], test["loss"], test["images"]
        note = collapse_note(row["train_error"], test["error"], test["top_class_share"],
                             num_classes(self.net.objectives[-1]))
        if note is not None:
            self._say(note)
        if subset:
            row["test_subset"] = True

    def _tensorboard(self) -> TensorBoardLog | None:
        """The TensorBoard writer of this run's folder, on the main process, when asked for."""
        if not (self.config.tensorboard and self.step.main):
            return None
        if self.run_folder is None:
            raise ContsupError("TensorBoard logging needs a run folder (Trainer(run_folder=...))")
        return TensorBoardLog(self.run_folder / "tensorboard")

    def _peak(self) -> float:
        """Peak memory of the largest process so far."""
        return float(self.step.reduce(torch.tensor([peak_memory(self.device)[0]], dtype=torch.float64), "max"))

    def _save(self, row: dict[str, Any]) -> None:
        """The epoch's checkpoint and metrics row, then its log line: a line shown is an epoch kept (main process)."""
        payload = self.state()
        if payload is None:
            return
        if self.run_folder is not None:
            with writing(self.run_folder):
                self.run_folder.mkdir(parents=True, exist_ok=True)
                save_checkpoint(self.run_folder / CHECKPOINT, payload)
                with open(self.run_folder / METRICS, "a") as f:
                    f.write(json.dumps(row) + "\n")
        tqdm.write(epoch_line(row, self.config.epochs, self.config.lr, [o.trains for o in self.net.objectives]))

    def summary(self) -> dict[str, Any]:
        """Final-epoch test error (and the best epoch, labelled), time, speed, memory, parameters."""
        peak = self.history[-1]["peak_memory_bytes"] if self.history else peak_memory(self.device)[0]
        device, kind = self.step.describe()
        out = run_summary(self.history, self.epoch, self.train_time, self.images, peak, kind, device,
                          self.net.param_counts(), self.step_memory)
        if self.rank_step_peaks is not None:
            out["rank_step_peak_memory_bytes"] = self.rank_step_peaks
        if self.run_folder is not None:
            with writing(self.run_folder):
                write_json(self.run_folder / SUMMARY, {**out, "meta": self.record})
        return out


def check_trainer(t: Any, steps_per_epoch: Any, local: Any, p: Any = None) -> None:
    """What a Trainer runs, from the command line or the Python API: its recipe (`check_train`), every setting
    used (`check_used`, with the network's `local` settings and a run's pipeline settings `p`), epochs of at least
    one step (a loader without a full batch trains nothing), the warm-up within the run and below the peak rate."""
    check_train(t)
    check_used(local, t, p)
    check_int("steps per epoch (full batches of the training loader)", steps_per_epoch, 1, 10**9)
    if t.warmup_steps is not None and t.warmup_steps > t.epochs * steps_per_epoch:
        raise ContsupError(f"warmup_steps must be at most the run's {t.epochs * steps_per_epoch} steps, "
                           f"got {t.warmup_steps}")
    schedule = make_schedule(t.schedule, t.lr, t.epochs, steps_per_epoch, t.warmup_epochs, t.warmup_steps,
                             t.warmup_start_lr)
    if schedule.warmup_steps > 0 and t.warmup_start_lr > t.lr:  # checked where a run starts: stored runs stay readable
        raise ContsupError(f"the warm-up would start at {t.warmup_start_lr:g}, {t.warmup_start_lr / t.lr:.3g}x the "
                           f"peak rate lr {t.lr:g}; pass --warmup-start-lr below it, e.g. {t.lr / 100:.1e}")


def run_record(run: RunConfig, info: DatasetInfo | None, net: LocalNetwork, **extra: Any) -> dict[str, Any]:
    """What a checkpoint and summary record of a run: its settings, the dataset's description (when known), the
    network's resolved plan, and `extra` (a pipeline's shape; `api` for a run of the Python API)."""
    return {"run": run.to_dict(), **({"dataset": asdict(info)} if info is not None else {}),
            "plan": net.plan.to_dict(), **extra}


def api_record(net: LocalNetwork, config: TrainConfig, loader: Iterable) -> dict[str, Any]:
    """The record of a run started through the Python API: its settings as a run configuration (the
    backbone's name and the loader's dataset, `custom` when it has none)."""
    info = getattr(loader, "info", None)
    run = RunConfig(data=DataConfig(name=getattr(info, "name", "custom")), arch=net.backbone_name,
                    local=net.config, train=config)
    return run_record(run, info, net, api=True)


def run_summary(
    history: list[dict[str, Any]], epochs: int, train_time: float, images: int, peak: float, peak_kind: str,
    device: str, params: dict[str, int], step_memory: PeakMemory | None = None,
) -> dict[str, Any]:
    """The summary of a run from its per-epoch history: final-epoch test error first, best epoch labelled.

    The best epoch is chosen among the epochs evaluated on as many test images as the final one.
    """
    test_images = history[-1].get("test_images") if history else None
    tested = [r for r in history if "test_error" in r and r.get("test_images") == test_images]
    best = min(tested, key=lambda r: r["test_error"]) if tested else None
    out = {
        "final_test_error": history[-1]["test_error"] if history else None,
        **({"final_test_images": test_images, "final_test_set": "subset" if history[-1].get("test_subset") else "full"}
           if test_images is not None else {}),
        "best_test_error_selected_on_test": best["test_error"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "epochs": epochs,
        "train_time_s": train_time,
        "images_per_s": images / train_time if train_time else 0.0,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        **({"step_peak_memory_bytes": step_memory.peak_bytes, "step_peak_memory_kind": step_memory.method}
           if step_memory is not None else {}),
        "device": device,
        "params": params,
    }
    if history and "val_error" in history[-1]:
        out["final_val_error"] = history[-1]["val_error"]
    return out


def rewrite_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl as the checkpoint's history (rows past the checkpoint belong to a lost epoch)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(out_dir / METRICS, lambda tmp: Path(tmp).write_text(text))
