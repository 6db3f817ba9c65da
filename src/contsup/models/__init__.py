"""Backbones as chains of units, by name in `BACKBONES`: one file per family, each imported here to register."""

from contsup.models.chain import BACKBONES, Backbone, Classifier, Shape, build_arch, probe_shapes
from contsup.models.resnet import resnet, resnet_imagenet
from contsup.models.vit import TokenClassifier, vit

__all__ = [
    "BACKBONES", "Backbone", "Classifier", "Shape", "TokenClassifier", "build_arch", "probe_shapes", "resnet",
    "resnet_imagenet", "vit",
]
