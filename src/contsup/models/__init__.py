"""Backbones as chains of units."""

from contsup.models.chain import Backbone, Classifier, Shape, probe_shapes
from contsup.models.resnet import build_arch, resnet

__all__ = ["Backbone", "Classifier", "Shape", "build_arch", "probe_shapes", "resnet"]
