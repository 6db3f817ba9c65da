"""The stage worker: each rank trains its modules on the micro-batches streaming through it.

Per batch, a stage receives what crosses its front cut, runs its modules' local steps, sends its
last module's output on, all-reduces gradients with the same stage of the other replicas, and steps
its own optimizer. Nothing flows backwards between ranks, so rank r works on batch t while rank r-1
already works on batch t+1; the result equals the single-process loop (spec §7).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from contsup.data import Dataset, DeviceLoader
from contsup.distributed.comm import END, EVAL, TRAIN, Link, Message
from contsup.distributed.stage import Stage, infer_module, param_index
from contsup.distributed.topology import Topology
from contsup.files import write_json
from contsup.method.network import LocalNetwork
from contsup.method.step import module_step
from contsup.run import RunConfig, make_loaders
from contsup.train.checkpoint import load_checkpoint, save_checkpoint
from contsup.train.memory import peak_memory, reset_peak
from contsup.train.schedule import default_warmup, lr_at
from contsup.train.trainer import make_optimizer, rewrite_metrics, run_summary


@dataclass
class PipelineConfig:
    """How the ranks split the work: replicas, stage sizes, in-flight bound, failure timeout."""

    replicas: int = 1  # R data-parallel copies of the pipeline; P = world size / R stages each
    stage_sizes: list[int] | None = None  # modules per stage; None: balanced by measured cost
    inflight: int = 2  # outstanding micro-batches a stage may have sent but not yet delivered
    timeout_s: float = 300.0  # a peer silent for this long is taken as failed
    backend: str = "auto"  # auto (nccl with CUDA, else gloo) | gloo | nccl


@dataclass
class Groups:
    """Process groups: the control group (CPU, gloo) over all ranks, and this stage's replica group."""

    ctrl: dist.ProcessGroup
    stage: dist.ProcessGroup | None  # None when R = 1


class PipelineTrainer:
    """One rank's share of a pipelined (and possibly data-parallel) local-learning run."""

    def __init__(self, cfg: RunConfig, pcfg: PipelineConfig, topo: Topology, groups: Groups, data: Dataset,
                 net: LocalNetwork, stage: Stage, device: torch.device, comm_device: torch.device) -> None:
        self.cfg, self.pcfg, self.topo, self.groups = cfg, pcfg, topo, groups
        self.data, self.net, self.stage, self.device = data, net, stage, device
        self.optimizer = make_optimizer(stage.module(), cfg.train)
        self.warmup = cfg.train.warmup_epochs if cfg.train.warmup_epochs is not None else default_warmup(
            cfg.train.epochs)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.train.bf16 else None
        self.loaders = make_loaders(cfg, data, device) if topo.first else {"train": None, "val": None, "test": None}
        mods = stage.modules
        self.link_in = Link(net, mods.start, device, comm_device, pcfg.inflight) if not topo.first else None
        self.link_out = Link(net, mods.stop, device, comm_device, pcfg.inflight) if not topo.last else None
        self.out_dir = Path(cfg.out) if cfg.out else None
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.train_time = 0.0
        self.images = 0

    # -- data -------------------------------------------------------------------------------------
    def _slice(self, t: torch.Tensor) -> torch.Tensor:
        """This replica's share of a batch."""
        return torch.tensor_split(t, self.topo.replicas)[self.topo.replica]

    def _batches(self, loader: DeviceLoader | None, kind: int) -> Iterable[Message]:
        """Messages entering this stage: built from the loader on the first stage, received elsewhere."""
        if self.topo.first:
            assert loader is not None
            decoders = len(self.net.decoders) > 0
            for x, y in loader:
                x, y = self._slice(x), self._slice(y)
                if x.shape[0] == 0:
                    continue
                if self.cfg.train.channels_last and self.device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                pixels = loader.denormalize(x) if decoders and kind == TRAIN else None
                yield Message(kind, x, {0: x}, y, pixels)
            return
        assert self.link_in is not None and self.topo.prev_rank is not None
        while True:
            msg = self.link_in.recv(self.topo.prev_rank)
            if msg.kind == END:
                return
            yield msg

    def _send(self, msg: Message) -> None:
        if self.link_out is not None and self.topo.next_rank is not None:
            self.link_out.send(msg, self.topo.next_rank)

    def _finish_phase(self) -> None:
        self._send(Message(END))
        if self.link_out is not None:
            self.link_out.flush()

    # -- training ---------------------------------------------------------------------------------
    def _all_reduce_grads(self) -> None:
        """Average gradients over this stage's replicas (one flat all-reduce)."""
        if self.groups.stage is None:
            return
        grads = [p.grad for p in self.stage.module().parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.groups.stage)
        flat /= self.topo.replicas
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def train_epoch(self) -> dict[str, Any]:
        """One epoch of this stage's local steps at the epoch's learning rate; metrics over all ranks."""
        tc = self.cfg.train
        lr = lr_at(self.epoch, tc.epochs, tc.lr, self.warmup, tc.warmup_start_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loader = self.loaders["train"]
        if loader is not None:
            loader.set_epoch(self.epoch)
        torch.manual_seed(tc.seed * 1000 + self.epoch)
        self.net.train()
        k_total = self.net.num_modules
        # [loss sum per module..., correct, seen, batches]; each rank fills its own entries.
        stats = torch.zeros(k_total + 3, dtype=torch.float64)
        start = time.perf_counter()
        for msg in self._batches(loader, TRAIN):
            assert msg.h is not None and msg.sources is not None and msg.y is not None
            self.optimizer.zero_grad(set_to_none=True)
            h, sources = msg.h, dict(msg.sources)
            losses = []
            for k in self.stage.modules:
                h, loss = module_step(self.net, k, h, sources, msg.y, msg.pixels, self.autocast)
                losses.append(loss)
            self._send(Message(TRAIN, h, sources, msg.y, msg.pixels))
            self._all_reduce_grads()
            self.optimizer.step()
            stats[self.stage.modules.start:self.stage.modules.stop] += torch.stack(losses).double().cpu()
            if self.topo.last:
                stats[k_total] += int((h.argmax(1) == msg.y).sum())
                stats[k_total + 1] += msg.y.numel()
                stats[k_total + 2] += 1
        self._finish_phase()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(stats, group=self.groups.ctrl)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=self.groups.ctrl)
        seconds = float(elapsed)
        batches, seen = max(float(stats[-1]), 1.0), float(stats[-2])
        mean = (stats[:k_total] / batches).tolist()
        self.train_time += seconds
        self.images += int(seen)
        return {
            "lr": lr, "train_loss": mean[-1], "local_losses": mean[:-1],
            "train_error": 100.0 * (1 - float(stats[-3]) / max(seen, 1.0)),
            "epoch_time": seconds, "images_per_s": seen / seconds if seconds > 0 else 0.0,
        }

    @torch.no_grad()
    def evaluate(self, loader: DeviceLoader | None) -> dict[str, float]:
        """Error (%) and mean cross entropy of the inference pass, run through the pipeline."""
        self.net.eval()
        counts = torch.zeros(3, dtype=torch.float64)  # wrong, total, loss sum
        amp = self.autocast if self.autocast is not None else torch.autocast(self.device.type, enabled=False)
        for msg in self._batches(loader, EVAL):
            assert msg.h is not None and msg.sources is not None and msg.y is not None
            h, sources = msg.h, dict(msg.sources)
            with amp:
                for k in self.stage.modules:
                    h = infer_module(self.net, k, h, sources)
            self._send(Message(EVAL, h, sources, msg.y))
            if self.topo.last:
                logits = h.float()
                counts[0] += int((logits.argmax(1) != msg.y).sum())
                counts[1] += msg.y.numel()
                counts[2] += float(F.cross_entropy(logits, msg.y, reduction="sum"))
        self._finish_phase()
        dist.all_reduce(counts, group=self.groups.ctrl)
        self.net.train()
        total = max(float(counts[1]), 1.0)
        return {"error": 100.0 * float(counts[0]) / total, "loss": float(counts[2]) / total}

    def fit(self) -> dict[str, Any] | None:
        """Train to the configured epochs, evaluating and checkpointing every epoch; rank 0 gets the summary."""
        reset_peak(self.device)
        has_val = self.data.val is not None
        while self.epoch < self.cfg.train.epochs:
            row = {"epoch": self.epoch + 1, **self.train_epoch()}
            if has_val:
                row["val_error"] = self.evaluate(self.loaders["val"])["error"]
            test = self.evaluate(self.loaders["test"])
            row["test_error"], row["test_loss"] = test["error"], test["loss"]
            peak = torch.tensor([peak_memory(self.device)[0]], dtype=torch.float64)
            dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=self.groups.ctrl)
            row["peak_memory_bytes"] = float(peak)
            self.epoch += 1
            self.history.append(row)
            self._save(row)
        return self.summary() if self.topo.rank == 0 else None

    # -- checkpoints ------------------------------------------------------------------------------
    def _part(self) -> dict[str, Any] | None:
        """This stage's weights, buffers and optimizer state keyed by single-process parameter index."""
        if self.topo.replica != 0:
            return None
        params = list(self.stage.module().parameters())
        index = param_index(self.net, params)
        local = self.optimizer.state_dict()
        state = {index[i]: {k: v.cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                 for i, s in local["state"].items()}
        hyper = {k: v for k, v in local["param_groups"][0].items() if k != "params"}
        return {"model": self.stage.state_dict(), "optimizer_state": state, "hyper": hyper}

    def merged_state(self) -> dict[str, Any] | None:
        """On rank 0: one checkpoint payload in the single-process Trainer's format; None elsewhere."""
        parts: list[Any] = [None] * self.topo.world if self.topo.rank == 0 else []
        dist.gather_object(self._part(), parts if self.topo.rank == 0 else None, dst=0, group=self.groups.ctrl)
        if self.topo.rank != 0:
            return None
        model: dict[str, torch.Tensor] = {}
        opt_state: dict[int, Any] = {}
        for part in parts:
            if part is not None:
                model.update(part["model"])
                opt_state.update(part["optimizer_state"])
        expected = self.net.state_dict().keys()
        if set(model) != set(expected):
            raise RuntimeError(f"merged checkpoint misses {sorted(set(expected) - set(model))[:5]}")
        n_params = len(list(self.net.parameters()))
        hyper = next(p for p in parts if p is not None)["hyper"]
        return {
            "epoch": self.epoch,
            "model": {k: model[k] for k in expected},
            "optimizer": {"state": opt_state, "param_groups": [{**hyper, "params": list(range(n_params))}]},
            "history": self.history,
            "train_time": self.train_time,
            "images": self.images,
            "train_config": asdict(self.cfg.train),
            "meta": {"run": self.cfg.to_dict(), "dataset": asdict(self.data.info),
                     "pipeline": {"stages": self.topo.stages, "replicas": self.topo.replicas}},
        }

    def _save(self, row: dict[str, Any]) -> None:
        payload = self.merged_state()
        if payload is None:
            return
        print(f"epoch {row['epoch']}/{self.cfg.train.epochs}  lr {row['lr']:.4f}  train loss {row['train_loss']:.4f}"
              f"  test error {row['test_error']:.2f}%  {row['images_per_s']:.0f} img/s", flush=True)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.out_dir / "checkpoint.pt", payload)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def resume(self, path: str | Path) -> None:
        """Continue from a (merged or single-process) checkpoint: rank 0 reads it, every rank takes its part."""
        box: list[Any] = [load_checkpoint(path) if self.topo.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.groups.ctrl)
        payload = box[0]
        self.net.load_state_dict(payload["model"])
        params = list(self.stage.module().parameters())
        glob = payload["optimizer"]
        state = {i: glob["state"][g] for i, g in enumerate(param_index(self.net, params)) if g in glob["state"]}
        hyper = {k: v for k, v in glob["param_groups"][0].items() if k != "params"}
        groups = [{**hyper, "params": list(range(len(params)))}]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.epoch, self.history = payload["epoch"], payload["history"]
        self.train_time, self.images = payload["train_time"], payload["images"]
        if self.out_dir is not None and self.topo.rank == 0:
            rewrite_metrics(self.out_dir, self.history)

    def summary(self) -> dict[str, Any]:
        """The same summary as the single-process Trainer's, plus the pipeline's shape."""
        peak = self.history[-1]["peak_memory_bytes"] if self.history else 0.0
        device = f"{self.device} x {self.topo.world} ranks ({self.topo.replicas} x {self.topo.stages} stages)"
        out = run_summary(self.history, self.epoch, self.train_time, self.images, peak,
                          peak_memory(self.device)[1] + ", largest rank", device, self.net.param_counts())
        if self.out_dir is not None:
            meta = {"run": self.cfg.to_dict(), "pipeline": asdict(self.pcfg)}
            write_json(self.out_dir / "summary.json", {**out, "meta": meta})
        return out
