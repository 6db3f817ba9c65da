"""Bit-identity check of a refactor: train the default K = 16 R1E network a few steps and print a digest.

Run it on two commits and compare the printed digests (equal = the same weights, bit for bit):

    OMP_NUM_THREADS=1 python benchmarks/bitident.py            # default settings (softmax, 1c2f, R1E, lean)
    OMP_NUM_THREADS=1 python benchmarks/bitident.py --recon    # with InfoPro's reconstruction term

The digest covers every floating tensor of the network's state in `parameters()` / buffer order, by value
only (names may change between commits); the data are synthetic and seeded.
"""

from __future__ import annotations

import argparse
import hashlib

import torch

from contsup.config import RunConfig
from contsup.run import build_network, load_data, make_trainer


def digest(tensors: list[torch.Tensor]) -> str:
    """sha256 over the tensors' bytes in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def main() -> None:
    """Train two epochs of 4 steps and print the weights' digest."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recon", action="store_true", help="add the reconstruction term (weights 1,1,1,1)")
    p.add_argument("--context-lr-scale", type=float, default=1.0)
    args = p.parse_args()
    torch.use_deterministic_algorithms(True)
    local = {"modules": 16, "context": "R1E", **({"recon": "1,1,1,1"} if args.recon else {})}
    cfg = RunConfig.from_dict({
        "data": {"name": "synthetic", "train_subset": 256}, "arch": "resnet32", "local": local,
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.1, "device": "cpu", "progress": False,
                  "context_lr_scale": args.context_lr_scale},
    })
    data = load_data(cfg)
    net = build_network(cfg, data.info.channels, data.info.num_classes, data.info.size)
    trainer = make_trainer(cfg, data, net)
    trainer.fit()
    state = [*trainer.net.parameters(), *trainer.net.buffers()]
    print(f"params {sum(p.numel() for p in trainer.net.parameters())}  digest {digest(state)}  "
          f"final test error {trainer.history[-1]['test_error']:.4f}")


if __name__ == "__main__":
    main()
