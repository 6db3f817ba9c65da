"""InfoPro's reconstruction term: the decoder, and the paper's weights of it by network, data and K."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from contsup.errors import ContsupError
from contsup.method.losses import float32_loss

__all__ = ["RECON_PRESETS", "RECON_SCHEDULES", "Decoder", "ReconWeights", "cut_weights", "parse_recon", "recon_ratio"]


RECON_SCHEDULES = ("cut", "stage", "hpff")


def recon_ratio(schedule: str, cut: int, num_cuts: int, stage: int | None = None) -> float:
    """How far cut `cut` (0-based, of `num_cuts` = K - 1) sits from the first weights towards the last.

    `cut` (InfoPro's code): cut / (K - 2), so the last cut takes the last weights. `stage` (MAN's and MAN++'s
    code): the ResNet stage of the unit after the cut (1, 2 or 3) / (K - 2), and 0 at a cut after the stem
    (`stage` = 0, MAN++'s). `hpff` (HPFF's released ResNet-32 run): cut / (K - 1), its code's i / (16 - 2) on
    its table of 15 modules, so no cut takes the last weights (docs/heads.md). All are 0 at K = 2.
    """
    if num_cuts <= 1:
        return 0.0
    if schedule == "cut":
        return cut / (num_cuts - 1)
    if schedule == "hpff":
        return cut / num_cuts
    if schedule == "stage":
        if stage is None:
            raise ContsupError("recon_schedule = stage needs a backbone whose units are named (stage, block), "
                               "as the ResNets'; use recon_schedule = cut")
        return stage / (num_cuts - 1)
    raise ContsupError(f"unknown recon_schedule {schedule!r}; choose from {', '.join(RECON_SCHEDULES)}")


@dataclass(frozen=True)
class ReconWeights:
    """(lambda_x, lambda_y) at the first cut (ixx_1, ixy_1) and at the last cut (ixx_2, ixy_2)."""

    ixx_1: float
    ixy_1: float
    ixx_2: float
    ixy_2: float

    def at(self, cut: int, num_cuts: int) -> tuple[float, float]:
        """(lambda_x, lambda_y) at cut index `cut` (0-based) of `num_cuts`, linearly interpolated."""
        return self.at_ratio(recon_ratio("cut", cut, num_cuts))

    def at_ratio(self, t: float) -> tuple[float, float]:
        """(lambda_x, lambda_y) a fraction t of the way from the first weights to the last (`recon_ratio`)."""
        return (self.ixx_1 + (self.ixx_2 - self.ixx_1) * t, self.ixy_1 + (self.ixy_2 - self.ixy_1) * t)

    def text(self) -> str:
        """The four numbers as `--recon` takes them."""
        return ",".join(f"{v:g}" for v in (self.ixx_1, self.ixy_1, self.ixx_2, self.ixy_2))


def cut_weights(recon: ReconWeights, schedule: str, cut: int, num_cuts: int,
                stage: int | None = None) -> tuple[float, float]:
    """Cut k's (lambda_x, lambda_y) under `schedule`; refused when they leave the module without a loss.

    A cut with lambda_x = lambda_y = 0 would train nothing (InfoPro's code allows it: `--recon 5,0.5,0,0`,
    MAN's published weights, gives its last local module zero loss under the cut schedule), and a negative
    weight (MAN's stage schedule extrapolates past the last weights when a stage exceeds K - 2) would
    maximise a loss; both are refused in one line.
    """
    lx, ly = recon.at_ratio(recon_ratio(schedule, cut, num_cuts, stage))
    if lx < 0 or ly < 0:
        raise ContsupError(f"recon {recon.text()} with recon_schedule = {schedule} gives cut {cut} negative weights "
                           f"({lx:g}, {ly:g}) at K = {num_cuts + 1}; use recon_schedule = cut")
    if lx == 0 and ly == 0:
        hint = ", or recon_schedule = stage (MAN's code, where 5,0.5,0,0 comes from)" if schedule == "cut" else ""
        raise ContsupError(f"recon {recon.text()} with recon_schedule = {schedule} gives cut {cut} of {num_cuts} "
                           f"lambda_x = lambda_y = 0: module {cut} would get no loss and never train; give it "
                           f"nonzero weights{hint}")
    return lx, ly


def _bounds(size: int, n: int) -> list[int]:
    """Where n patches of a side of `size` start and end: i * size // n (HPFF's split at h // 2 for n = 2)."""
    return [i * size // n for i in range(n + 1)]


def _patches(t: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The n x n patches of a feature map or image, row by row."""
    rows, cols = _bounds(t.shape[-2], n), _bounds(t.shape[-1], n)
    return [t[..., r0:r1, c0:c1] for r0, r1 in zip(rows, rows[1:], strict=False)
            for c0, c1 in zip(cols, cols[1:], strict=False)]


class Decoder(nn.Module):
    """InfoPro's reconstruction decoder: upsample h_k to the image, conv3x3 -> BN -> ReLU -> conv3x3.

    It returns logits: the paper's sigmoid is folded into the loss (binary cross entropy with logits, the
    same function, numerically safer, and allowed under CUDA autocast where sigmoid + BCE is refused).
    With `patches` = n > 1 it is HPFF's patched decoder: n x n decoders, decoder i upsampling patch i of
    h_k to the size of patch i of the image (split at i * size // n), the n^2 losses summed.
    """

    def __init__(self, channels: int, image_channels: int, image_size: tuple[int, int], patches: int = 1) -> None:
        super().__init__()
        self.image_size = image_size
        self.patches = patches

        def one() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(channels, 12, 3, 1, 1, bias=False), nn.BatchNorm2d(12),
                                 nn.ReLU(inplace=True), nn.Conv2d(12, image_channels, 3, 1, 1, bias=False))

        self.net = one()  # the first patch's (with one patch, the only) decoder: its state keys stay `net.*`
        self.more = nn.ModuleList(one() for _ in range(patches * patches - 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The reconstruction's logits (the image is their sigmoid), with one decoder."""
        if tuple(h.shape[-2:]) != tuple(self.image_size):
            h = F.interpolate(h, size=self.image_size, mode="bilinear", align_corners=True)
        return self.net(h)

    def loss(self, h: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Binary cross entropy of the reconstruction against the un-normalised image, in float32 (summed over
        the patches with HPFF's patched decoders)."""
        if self.patches == 1:
            return float32_loss(F.binary_cross_entropy_with_logits, self(h), pixels)
        if min(h.shape[-2:]) < self.patches:
            raise ContsupError(f"recon_patches {self.patches} needs feature maps of at least {self.patches} x "
                               f"{self.patches}; this cut's are {tuple(h.shape[-2:])}")
        total = h.new_zeros((), dtype=torch.float32)
        for net, part, target in zip([self.net, *self.more], _patches(h, self.patches),
                                     _patches(pixels, self.patches), strict=True):
            part = F.interpolate(part, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=True)
            total = total + float32_loss(F.binary_cross_entropy_with_logits, net(part), target)
        return total


# The paper's [ixx_1, ixy_1, ixx_2, ixy_2] by (arch, dataset, K) (docs/method.md, reconstruction);
# "-balanced" for the memory-balanced cut tables.
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


def recon_off(text: str | None) -> bool:
    """Whether a `recon` setting turns the reconstruction term off (unset, empty, none or off)."""
    return text is None or text.lower() in ("", "none", "off")


def parse_recon(text: str | None, arch: str, dataset: str | None, modules: int,
                balanced: bool) -> ReconWeights | None:
    """`--recon`: none, `paper` (the preset for this arch/dataset/K) or four numbers ixx1,ixy1,ixx2,ixy2."""
    if recon_off(text):
        return None
    if text.lower() == "paper":
        if dataset is None:
            raise ContsupError("recon = paper needs the dataset whose weights to take: set recon_dataset")
        key = (arch, dataset + ("-balanced" if balanced else ""), modules)
        if key not in RECON_PRESETS:
            raise ContsupError(
                f"the paper gives no reconstruction weights for {key[0]} on {key[1]} at K={key[2]}; "
                "pass four numbers: --recon ixx1,ixy1,ixx2,ixy2"
            )
        return ReconWeights(*RECON_PRESETS[key])
    try:
        values = [float(v) for v in text.split(",") if v.strip().isascii()]
    except ValueError:
        values = []
    if len(values) != 4 or not all(0 <= v <= 1e6 for v in values):
        raise ContsupError(f"--recon takes 'paper', 'none' or four numbers from 0 to 1e6, ixx1,ixy1,ixx2,ixy2; "
                           f"got {text!r}")
    return ReconWeights(*values)
