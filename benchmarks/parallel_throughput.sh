#!/usr/bin/env bash
# docs/parallel.md, "A first quiet measurement": the images/s of each way at P = 2 on this machine, one short
# epoch each (5,120 Fashion-MNIST images, 40 steps of 128, seed 0). Run it on a quiet machine:
#   bash benchmarks/parallel_throughput.sh runs/parallel-throughput
# then read images_per_s from each run's summary.json and each rank's busy/wall/peak from its ranks.json.
set -u
out=${1:-runs/parallel-throughput}
contsup=${CONTSUP:-contsup}
common=(--data fashion-mnist --arch resnet32 --train-subset 5120 --epochs 1 --batch-size 128 --lr 0.1 --device cpu
        --no-progress --no-step-peak)
mkdir -p "$out"
run() {
    name=$1; shift
    echo "$name, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    "$contsup" train "${common[@]}" "$@" --out "$out/$name" > "$out/$name.log" 2>&1 || echo "$name failed: $out/$name.log"
}
run local-K16-R1E-2x1 --modules 16 --context R1E --ranks 2 --threads 1
run one-K16-R1E-1x2 --modules 16 --context R1E --ranks 1 --threads 2
run local-K2-R0-2x1 --modules 2 --context R0 --ranks 2 --threads 1
run 1f1b-2x1 --modules 1 --parallel 1f1b --micro-batches 4 --ranks 2 --threads 1
run gpipe-2x1 --modules 1 --parallel gpipe --micro-batches 4 --ranks 2 --threads 1
run ddp-2x1 --modules 1 --parallel ddp --ranks 2 --threads 1
run one-E2E-1x2 --modules 1 --ranks 1 --threads 2
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
