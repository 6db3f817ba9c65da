"""Backbones as chains of units, by name in `BACKBONES`."""

from contsup.models.chain import Backbone, Classifier, Shape, probe_shapes
from contsup.models.resnet import BACKBONES, build_arch, resnet, resnet_imagenet

__all__ = ["BACKBONES", "Backbone", "Classifier", "Shape", "build_arch", "probe_shapes", "resnet", "resnet_imagenet"]
