"""Local heads `<a>c<b>f`: a conv layers, global average pool, b linear layers (docs/method.md, heads)."""

from __future__ import annotations

import re

import torch
from torch import nn

from contsup.errors import ContsupError

HEADS = ["0c1f", "0c2f", "1c1f", "1c2f", "1c3f", "2c2f"]
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
            # C -> 2C with stride 2 below 64 channels; from 64 on (the paper's C = 64) C stays, stride 1.
            out_ch, stride = (channels, 1) if channels >= 64 else (2 * channels, 2)
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
