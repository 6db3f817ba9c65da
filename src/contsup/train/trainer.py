"""The training loop, apart from the model: schedule, local steps, evaluation, metrics, checkpoints."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from contsup.errors import ContsupError
from contsup.method.network import LocalNetwork
from contsup.method.step import local_step
from contsup.profile.memory import PeakMemory
from contsup.train.checkpoint import load_checkpoint, save_checkpoint
from contsup.train.memory import peak_memory, reset_peak, step_peak
from contsup.train.report import TAIL, EpochLosses, epoch_line, legend, postfix
from contsup.train.schedule import default_warmup, lr_at
from contsup.train.tensorboard import TensorBoardLog


@dataclass
class TrainConfig:
    """Optimisation recipe; defaults are the paper's CIFAR-10 recipe (spec §5)."""

    epochs: int = 160
    batch_size: int = 1024
    lr: float = 0.8
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 1e-4
    warmup_epochs: int | None = None  # None: 10 of every 160 epochs, as in the paper
    warmup_start_lr: float = 0.01
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = False  # bf16 autocast (CUDA)
    channels_last: bool = False  # channels_last memory format (CUDA)
    progress: bool = True  # tqdm progress bars (training and evaluation)
    tensorboard: bool = False  # also log each epoch to <out>/tensorboard (install extra `tensorboard`)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(net: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with Nesterov momentum and weight decay over every parameter of the network."""
    return torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
    )


@torch.no_grad()
def evaluate(net: torch.nn.Module, loader: Iterable, autocast: Any = None, bar: str | None = None) -> dict[str, float]:
    """Error (%) and mean cross entropy of the network's inference pass over a loader (a progress bar named `bar`)."""
    was_training = net.training
    net.eval()
    amp = autocast if autocast is not None else contextlib.nullcontext()
    wrong = total = 0
    loss_sum = torch.zeros(())
    for x, y in tqdm(loader, desc=bar, leave=False, disable=bar is None, dynamic_ncols=True):
        with amp:
            logits = net(x).float()
        loss_sum = loss_sum + F.cross_entropy(logits, y, reduction="sum").cpu()
        wrong += int((logits.argmax(1) != y).sum())
        total += y.numel()
    net.train(was_training)
    return {"error": 100.0 * wrong / max(total, 1), "loss": float(loss_sum) / max(total, 1)}


class Trainer:
    """Trains a LocalNetwork with local steps; checkpoints and metrics go to `out_dir`."""

    def __init__(
        self,
        net: LocalNetwork,
        train_loader: Iterable,
        test_loader: Iterable,
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        val_loader: Iterable | None = None,
        pixels: Callable[[torch.Tensor], torch.Tensor] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.net = net.to(self.device)
        if cfg.channels_last and self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.train_loader, self.test_loader, self.val_loader = train_loader, test_loader, val_loader
        # Reconstruction targets are the un-normalised image: the loader's inverse transform, if any.
        self.pixels = pixels or getattr(train_loader, "denormalize", None) or (lambda x: x)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = meta or {}
        self.optimizer = make_optimizer(self.net, cfg)
        self.warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else default_warmup(cfg.epochs)
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.bf16 else None
        )
        self.epoch = 0
        self.step_memory: PeakMemory | None = None
        self.history: list[dict[str, Any]] = []
        self.train_time = 0.0
        self.images = 0

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly."""
        return {
            "epoch": self.epoch,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "train_time": self.train_time,
            "images": self.images,
            "train_config": asdict(self.cfg),
            "meta": self.meta,
        }

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint written by this trainer."""
        payload = load_checkpoint(path, map_location=self.device)
        self.net.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.epoch = payload["epoch"]
        self.history = payload["history"]
        self.train_time = payload["train_time"]
        self.images = payload["images"]
        if self.out_dir is not None:
            rewrite_metrics(self.out_dir, self.history)

    # -- loop -------------------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.cfg.channels_last and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def train_epoch(self) -> dict[str, Any]:
        """One epoch of local steps at this epoch's learning rate."""
        lr = lr_at(self.epoch, self.cfg.epochs, self.cfg.lr, self.warmup, self.cfg.warmup_start_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(self.epoch)
        torch.manual_seed(self.cfg.seed * 1000 + self.epoch)
        self.net.train()
        needs_pixels = len(self.net.decoders) > 0
        losses = EpochLosses()
        correct = seen = 0
        bar = tqdm(
            self.train_loader, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", leave=False,
            disable=not self.cfg.progress, dynamic_ncols=True,
        )
        start = time.perf_counter()
        for x, y in bar:
            x, y = self._to_device(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            out = local_step(self.net, x, y, self.pixels(x) if needs_pixels else None, self.autocast)
            self.optimizer.step()
            losses.add(out.losses)
            correct += int((out.logits.argmax(1) == y).sum())
            seen += y.numel()
            bar.set_postfix(postfix(out.losses))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.train_time += elapsed
        self.images += seen
        mean, end = losses.mean(), losses.mean(TAIL)
        return {
            "lr": lr,
            "train_loss": mean[-1] if mean else float("nan"),  # epoch means of the last module's loss
            "local_losses": mean[:-1],  # and of each local head's
            "train_loss_end": end[-1] if end else float("nan"),  # the same over the epoch's last quarter
            "local_losses_end": end[:-1],
            "train_error": 100.0 * (1 - correct / max(seen, 1)),
            "epoch_time": elapsed,
            "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
        }

    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train to `cfg.epochs` (or stop after epoch `until`), evaluating and checkpointing every epoch.

        First measures the peak memory of one local step of this network at the run's batch size (on a
        copy; see `step_peak`), reported in the summary beside the process peak.
        """
        board = self._tensorboard()
        if self.step_memory is None:
            self.step_memory = step_peak(self.net, self.cfg.batch_size, self.device, self.autocast)
            if self.cfg.progress:
                tqdm.write(f"step peak memory: {self.step_memory.peak_bytes / 2**20:.1f} MiB at batch "
                           f"{self.cfg.batch_size} ({self.step_memory.method})\n{legend(self.net.num_modules)}")
        reset_peak(self.device)
        stop = self.cfg.epochs if until is None else min(until, self.cfg.epochs)
        while self.epoch < stop:
            row = {"epoch": self.epoch + 1, **self.train_epoch()}
            if self.val_loader is not None:
                row["val_error"] = evaluate(self.net, self.val_loader, self.autocast, self._bar("validation"))["error"]
            test = evaluate(self.net, self.test_loader, self.autocast, self._bar("test"))
            row["test_error"], row["test_loss"] = test["error"], test["loss"]
            row["peak_memory_bytes"] = peak_memory(self.device)[0]
            self.epoch += 1
            self.history.append(row)
            self._log(row)
            if board is not None:
                board.log(row)
        if board is not None:
            board.close()
        return self.summary()

    def _bar(self, split: str) -> str | None:
        """The evaluation progress bar's name, or None without progress bars."""
        return f"evaluating on the {split} set" if self.cfg.progress else None

    def _tensorboard(self) -> TensorBoardLog | None:
        """The TensorBoard writer of this run's folder, when asked for."""
        if not self.cfg.tensorboard:
            return None
        if self.out_dir is None:
            raise ContsupError("TensorBoard logging needs a run folder (out_dir)")
        return TensorBoardLog(self.out_dir / "tensorboard")

    def _log(self, row: dict[str, Any]) -> None:
        if self.cfg.progress:
            tqdm.write(epoch_line(row, self.cfg.epochs))
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.out_dir / "checkpoint.pt", self.state())
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def summary(self) -> dict[str, Any]:
        """Final-epoch test error (and the best epoch, labelled), time, speed, memory, parameters."""
        peak, how = peak_memory(self.device)
        out = run_summary(self.history, self.epoch, self.train_time, self.images, peak, how, str(self.device),
                          self.net.param_counts(), self.step_memory)
        if self.out_dir is not None:
            (self.out_dir / "summary.json").write_text(json.dumps({**out, "meta": self.meta}, indent=2) + "\n")
        return out


def run_summary(
    history: list[dict[str, Any]], epochs: int, train_time: float, images: int, peak: float, peak_kind: str,
    device: str, params: dict[str, int], step_memory: PeakMemory | None = None,
) -> dict[str, Any]:
    """The summary of a run from its per-epoch history: final-epoch test error first, best epoch labelled."""
    best = min(history, key=lambda r: r["test_error"]) if history else None
    out = {
        "final_test_error": history[-1]["test_error"] if history else None,
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
    (out_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
