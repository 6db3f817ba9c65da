#!/usr/bin/env bash
# ResNet-110 toward the memory limit (docs/benchmarks.md, "ResNet-110 at batch 1024" and "at finer cuts"):
# end-to-end, K = 16 R0 and R1E on balanced cuts, each plain and with its units checkpointed (8 segments: one unit
# per segment in every K = 16 module, 8 segments of ~7 units end-to-end), then K = 32 and 55 R1E, against each cut
# table's lower bound. Step peaks at the batch of 1024 (memory does not depend on the load), step times
# at batch 128 on a quiet machine:
#   bash benchmarks/resnet110_limit.sh docs/results/profile/resnet110
# Then `PYTHONPATH=src python benchmarks/peak_breakdown.py --arch resnet110 -K 16 --context R1E` says what the
# peak holds (-K 55 --channels-last for the finer cuts, --lean-norm for BatchNorm's lean backward).
set -euo pipefail
out=${1:-runs/profile/resnet110}
common=(--arch resnet110 -K 1,16 --contexts R0,R1E --cuts balanced --input 3x32x32 --device cpu --threads 1
        --checkpoint-segments 0,8)
contsup profile "${common[@]}" --batch-size 1024 --warmup 0 --steps 1 --out "$out/batch-1024"
# channels_last: the CPU's convolutions (oneDNN) then need no reordered copy of an activation in backward
contsup profile "${common[@]/R0,R1E/R1E}" --channels-last --batch-size 1024 --warmup 0 --steps 1 \
    --out "$out/batch-1024-channels-last"
contsup profile "${common[@]}" --batch-size 128 --warmup 1 --steps 3 --out "$out/batch-128"
# finer cuts (one block a stage-1 module, "ResNet-110 at finer cuts"): K = 32 and 55 R1E, channels_last
contsup profile --arch resnet110 -K 32,55 --contexts R1E --cuts balanced --input 3x32x32 --device cpu --threads 1 \
    --channels-last --batch-size 1024 --warmup 0 --steps 1 --out "$out/batch-1024-fine-cuts"
# the same with BatchNorm's lean backward (`--lean-norm`, "ResNet-110 at finer cuts"), E2E beside them
contsup profile --arch resnet110 -K 1,32,55 --contexts R1E --cuts balanced --input 3x32x32 --device cpu --threads 1 \
    --channels-last --lean-norm --batch-size 1024 --warmup 0 --steps 1 --out "$out/batch-1024-lean-norm"
