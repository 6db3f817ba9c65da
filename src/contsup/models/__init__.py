"""Backbones as chains of units, by name in `BACKBONES`: one file per family, each imported here to register."""

from contsup.models.chain import BACKBONES, Backbone, Classifier, Shape, probe_shapes
from contsup.models.reference import build_reference
from contsup.models.resnet import resnet, resnet_imagenet
from contsup.models.traced import trace_backbone
from contsup.models.vit import TokenClassifier, vit


def build_arch(name: str, in_channels: int, num_classes: int, image_size: int = 32) -> Backbone:
    """Build a registered backbone by name (see `BACKBONES`), or the user's `package.module:function` (the
    model it returns, traced: contsup.models.reference), for square inputs of side `image_size`."""
    if ":" in name:
        return build_reference(name, in_channels, num_classes, image_size)
    return BACKBONES[name.lower()](in_channels, num_classes, image_size)


__all__ = [
    "BACKBONES", "Backbone", "Classifier", "Shape", "TokenClassifier", "build_arch", "probe_shapes",
    "resnet", "resnet_imagenet", "trace_backbone", "vit",
]
