"""How much of the input is left in a feature map: InfoPro's decoder (docs/method.md, reconstruction)
trained to rebuild x from it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contsup.errors import ContsupError
from contsup.method.recon import Decoder


@dataclass
class ReconConfig:
    """Fixed budget of the reconstruction decoder (two runs with the same config and seed agree)."""

    train_size: int = 2000  # the first this many probe-training examples train the decoder
    steps: int = 200  # Adam steps
    batch_size: int = 64
    lr: float = 5e-3


@dataclass
class ReconResult:
    """Held-out reconstruction error: MSE and BCE of pixels in [0, 1], and PSNR (dB, peak 1)."""

    mse: float
    bce: float
    psnr: float


def token_map(h: torch.Tensor) -> torch.Tensor:
    """Token sequences (N, T, D) as maps (N, D, g, g) of their patch tokens in raster order (a class token, when
    T = g^2 + 1, left out); feature maps as they are."""
    if h.dim() != 3:
        return h
    side = math.isqrt(h.shape[1])
    if h.shape[1] - side * side not in (0, 1):
        raise ContsupError(f"{h.shape[1]} tokens are not a square grid of patches (plus a class token)")
    patches = h[:, h.shape[1] - side * side:]
    return patches.transpose(1, 2).reshape(h.shape[0], h.shape[2], side, side)


def decoder_probe(
    train_h: torch.Tensor, train_pixels: torch.Tensor, test_h: torch.Tensor, test_pixels: torch.Tensor,
    cfg: ReconConfig, seed: int, eval_batch: int = 500,
) -> ReconResult:
    """Train a fresh Decoder on frozen features with BCE to the pixels; score it on held-out features."""
    train_h, test_h = token_map(train_h), token_map(test_h)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the decoder's initial weights
    decoder = Decoder(train_h.shape[1], train_pixels.shape[1], tuple(train_pixels.shape[-2:]))
    opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr)
    n = train_h.shape[0]
    decoder.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        opt.zero_grad()
        decoder.loss(train_h[idx], train_pixels[idx]).backward()
        opt.step()
    decoder.eval()
    mse = bce = 0.0
    with torch.no_grad():
        for i in range(0, test_h.shape[0], eval_batch):
            logits, target = decoder(test_h[i:i + eval_batch]).float(), test_pixels[i:i + eval_batch].float()
            mse += float(F.mse_loss(logits.sigmoid(), target, reduction="sum"))  # host syncs: probe, not training
            bce += float(F.binary_cross_entropy_with_logits(logits, target, reduction="sum"))
    count = test_pixels.numel()
    mse, bce = mse / count, bce / count
    return ReconResult(mse, bce, 10 * math.log10(1 / max(mse, 1e-12)))
