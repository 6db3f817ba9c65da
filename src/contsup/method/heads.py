"""Local heads (`<a>c<b>f`), their losses (softmax / supervised contrastive) and the InfoPro decoder."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from contsup.errors import ContsupError

HEADS = ["0c1f", "0c2f", "1c1f", "1c2f", "1c3f", "2c2f"]
LOSSES = ["softmax", "contrast"]
_HEAD = re.compile(r"([0-2])c([1-3])f")


def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    """conv3x3 (no bias) -> BN -> ReLU."""
    return [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class LocalHead(nn.Module):
    """conv layers, global average pool, then linear layers: turns h_k into logits or a feature."""

    def __init__(self, channels: int, kind: str, out_dim: int, width: int = 128, widen: float = 1.0) -> None:
        super().__init__()
        match = _HEAD.fullmatch(kind)
        if kind not in HEADS or not match:
            raise ContsupError(f"unknown head {kind!r}; choose from {', '.join(HEADS)}")
        convs, fcs = int(match.group(1)), int(match.group(2))
        layers: list[nn.Module] = []
        ch = channels
        if convs:
            # Spec §3: C -> 2C with stride 2, except C = 64, which stays 64 with stride 1.
            out_ch, stride = (channels, 1) if channels == 64 else (2 * channels, 2)
            out_ch = int(out_ch * widen)
            if out_ch < 1:
                raise ContsupError(f"widen {widen} leaves a local head's conv layer with no channels")
            layers += conv_bn_relu(ch, out_ch, stride)
            ch = out_ch
            if convs == 2:
                layers += conv_bn_relu(ch, ch, 1)
        self.conv = nn.Sequential(*layers)
        hidden = int(width * widen)
        if fcs > 1 and hidden < 1:
            raise ContsupError(f"width {width} x widen {widen} leaves a local head with no hidden units")
        dims = [ch] + [hidden] * (fcs - 1) + [out_dim]
        fc: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims, dims[1:], strict=False)):
            if i:
                fc.append(nn.ReLU(inplace=True))
            fc.append(nn.Linear(a, b))
        self.fc = nn.Sequential(*fc)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Head output for a feature map."""
        return self.fc(self.conv(h).mean(dim=(2, 3)))


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) with positives = same label in the batch."""
    z = F.normalize(features.float(), dim=1)
    logits = z @ z.T / temperature
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    has_pos = count > 0
    if not has_pos.any():
        return features.sum() * 0.0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)
    return -(pos_log_prob[has_pos] / count[has_pos]).mean()


def task_loss(output: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """The task term of a local loss for the head's output."""
    if loss == "softmax":
        return F.cross_entropy(output.float(), labels)
    return supcon_loss(output, labels)


def head_out_dim(loss: str, num_classes: int, width: int, widen: float) -> int:
    """Output size of a local head: the classes (softmax) or the W-dim embedding (contrast)."""
    if loss not in LOSSES:
        raise ContsupError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
    return num_classes if loss == "softmax" else int(width * widen)


class Decoder(nn.Module):
    """InfoPro's reconstruction decoder: upsample h_k to the image, conv3x3 -> BN -> ReLU -> conv3x3 -> sigmoid."""

    def __init__(self, channels: int, image_channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.image_size = image_size
        self.net = nn.Sequential(
            nn.Conv2d(channels, 12, 3, 1, 1, bias=False),
            nn.BatchNorm2d(12),
            nn.ReLU(inplace=True),
            nn.Conv2d(12, image_channels, 3, 1, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Reconstructed image in [0, 1]."""
        if tuple(h.shape[-2:]) != tuple(self.image_size):
            h = F.interpolate(h, size=self.image_size, mode="bilinear", align_corners=True)
        return self.net(h)

    def loss(self, h: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Binary cross entropy of the reconstruction against the un-normalised image."""
        return F.binary_cross_entropy(self(h).float(), pixels.float())


@dataclass(frozen=True)
class ReconWeights:
    """(lambda_x, lambda_y) at the first cut (ixx_1, ixy_1) and at the last cut (ixx_2, ixy_2)."""

    ixx_1: float
    ixy_1: float
    ixx_2: float
    ixy_2: float

    def at(self, cut: int, num_cuts: int) -> tuple[float, float]:
        """(lambda_x, lambda_y) at cut index `cut` (0-based) of `num_cuts`, linearly interpolated."""
        t = cut / (num_cuts - 1) if num_cuts > 1 else 0.0
        return (self.ixx_1 + (self.ixx_2 - self.ixx_1) * t, self.ixy_1 + (self.ixy_2 - self.ixy_1) * t)


# Spec §3: the paper's [ixx_1, ixy_1, ixx_2, ixy_2] by (arch, dataset, K); "-balanced" for the
# memory-balanced cut tables.
RECON_PRESETS: dict[tuple[str, str, int], tuple[float, float, float, float]] = {
    ("resnet32", "cifar10", 2): (5, 1, 0, 0),
    ("resnet32", "cifar10", 4): (6, 0, 1, 2),
    ("resnet32", "cifar10", 8): (5, 0, 0, 2),
    ("resnet32", "cifar10", 16): (5, 0.05, 0.2, 0.5),
    ("resnet110", "cifar10", 2): (5, 0.5, 0, 0),
    ("resnet110", "cifar10", 4): (1, 0, 0, 1),
    ("resnet110", "cifar10", 8): (5, 0, 0, 1),
    ("resnet110", "cifar10", 16): (5, 0, 0.5, 1),
    ("resnet110", "stl10", 2): (10, 1, 0, 0),
    ("resnet110", "stl10", 4): (20, 0.2, 5, 2),
    ("resnet110", "stl10", 8): (20, 0.2, 5, 1),
    ("resnet110", "stl10", 16): (20, 0.5, 10, 0.1),
    ("resnet110", "svhn", 2): (1, 0.1, 0, 0),
    ("resnet110", "svhn", 4): (5, 0, 0.5, 0),
    ("resnet110", "svhn", 8): (5, 0, 0.5, 2),
    ("resnet110", "svhn", 16): (5, 0.2, 0.5, 1),
    ("resnet32", "cifar10-balanced", 2): (5, 0.1, 0, 0),
    ("resnet32", "cifar10-balanced", 3): (5, 0, 5, 0.1),
    ("resnet32", "cifar10-balanced", 4): (5, 0, 0, 0.1),
    ("resnet32", "cifar10-balanced", 8): (5, 0, 0, 2),
    ("resnet110", "cifar10-balanced", 2): (5, 0.1, 0, 0),
    ("resnet110", "cifar10-balanced", 3): (5, 0, 5, 0.1),
    ("resnet110", "cifar10-balanced", 4): (5, 0, 0, 0.1),
}


def parse_recon(text: str | None, arch: str, dataset: str, modules: int, balanced: bool) -> ReconWeights | None:
    """`--recon`: none, `paper` (the preset for this arch/dataset/K) or four numbers ixx1,ixy1,ixx2,ixy2."""
    if text is None or text.lower() in ("", "none", "off"):
        return None
    if text.lower() == "paper":
        key = (arch, dataset + ("-balanced" if balanced else ""), modules)
        if key not in RECON_PRESETS:
            raise ContsupError(
                f"the paper gives no reconstruction weights for {key[0]} on {key[1]} at K={key[2]}; "
                "pass four numbers: --recon ixx1,ixy1,ixx2,ixy2"
            )
        return ReconWeights(*RECON_PRESETS[key])
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ContsupError(f"--recon takes 'paper', 'none' or four numbers ixx1,ixy1,ixx2,ixy2; got {text!r}")
    return ReconWeights(*values)
