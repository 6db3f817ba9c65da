"""A tiny synthetic preset for sweep tests: ResNet-8 on 128 synthetic images, one epoch."""

TINY = """
title = "tiny"
description = "a tiny synthetic sweep"

[base]
arch = "resnet8"
dataset = "synthetic"
train_subset = 128

[grid]
modules = [2]
context = ["E2E", "R1E"]
seed = [0]

[recipe.cpu]
epochs = 1
batch_size = 64
lr = 0.05
device = "cpu"

[recipe.long]
epochs = 2
batch_size = 64
lr = 0.05
device = "cpu"
"""
