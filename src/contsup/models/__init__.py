"""Backbones as chains of units, by name in `BACKBONES`."""

from contsup.models.chain import Backbone, Classifier, Shape, probe_shapes
from contsup.models.resnet import BACKBONES, build_arch, resnet, resnet_imagenet
from contsup.models.vit import TokenClassifier, vit

__all__ = [
    "BACKBONES", "Backbone", "Classifier", "Shape", "TokenClassifier", "build_arch", "probe_shapes", "resnet",
    "resnet_imagenet", "vit",
]
