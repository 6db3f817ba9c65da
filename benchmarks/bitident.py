"""Hash of the weights after a short seeded K=16 R1E run: the same hash before and after a refactor
means the training path is bit-identical.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bitident.py
"""

from __future__ import annotations

import hashlib
import tempfile

import torch

from contsup.run import run_training
from contsup.train import load_checkpoint

try:
    from contsup.config import DataConfig, LocalConfig, RunConfig, TrainConfig
except ImportError:  # the code before the one configuration schema (88ad408), to compare against
    from contsup.method import LocalConfig
    from contsup.run import DataConfig, RunConfig
    from contsup.train import TrainConfig


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every entry of a state_dict (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def same(cls: type, **settings: object) -> dict[str, object]:
    """The settings that `cls` has: on today's code they select what the old code did (straightforward encoders,
    the per-epoch rate); the old code has no such fields and always did that."""
    return {k: v for k, v in settings.items() if k in cls.__dataclass_fields__}


def main() -> None:
    """Train resnet32 cut into 16 modules (R1E) on synthetic data for 2 epochs and print the weights' hash."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig(
            data=DataConfig(name="synthetic", train_subset=128),
            arch="resnet32",
            local=LocalConfig(modules=16, context="R1E", **same(LocalConfig, lean_context=False)),
            train=TrainConfig(epochs=3, batch_size=64, lr=0.05, warmup_epochs=1, device="cpu", progress=False,
                              **same(TrainConfig, schedule="epoch")),
            out=out,
        )
        summary = run_training(cfg)
        payload = load_checkpoint(out)
    print(f"weights sha256 {state_hash(payload['model'])}  final test error {summary['final_test_error']:.4f}")


if __name__ == "__main__":
    main()
