"""The paper's local heads `<a>c<b>f` (docs/method.md, heads): a conv layers, an average pool over positions,
b linear layers. A head of another kind is one file like this one, registered with `@HEADS.register`.
"""

from __future__ import annotations

import torch
from torch import nn

from contsup.errors import ContsupError
from contsup.method.heads.registry import HEADS, HeadSite
from contsup.models.chain import Shape, pool


def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    """conv3x3 (no bias) -> BN -> ReLU."""
    return [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class LocalHead(nn.Module):
    """conv layers, average pool over positions, then linear layers: turns h_k into logits or a feature.

    On token sequences (NLC) only conv-free heads (`0c<b>f`) apply: the pool averages the tokens.
    """

    def __init__(self, shape: Shape, convs: int, fcs: int, out_dim: int, width: int = 128,
                 widen: float = 1.0) -> None:
        super().__init__()
        if convs and not shape.is_map:
            raise ContsupError(f"head {convs}c{fcs}f has conv layers, which need feature maps; this cut outputs "
                               f"tokens ({shape}): use 0c{fcs}f")
        layers: list[nn.Module] = []
        ch = shape.channels
        if convs:
            # C -> 2C with stride 2 below 64 channels; from 64 on (the paper's C = 64) C stays, stride 1.
            out_ch, stride = (ch, 1) if ch >= 64 else (2 * ch, 2)
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
        """Head output for a feature map or a token sequence."""
        return self.fc(pool(self.conv(h)))


@HEADS.register("1c2f", pattern=r"([0-2])c([1-3])f", help="<a>c<b>f (a = 0..2 conv layers, b = 1..3 linear)")
def conv_fc_head(convs: str, fcs: str, site: HeadSite) -> nn.Module:
    """The paper's `<a>c<b>f` head at this site."""
    return LocalHead(site.shape, int(convs), int(fcs), site.out_dim, site.settings.width, site.settings.widen)
