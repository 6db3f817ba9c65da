#!/usr/bin/env bash
# docs/parallel.md, time-to-accuracy: the clock of every way of training at P = 2 on this machine, measured on a
# quiet machine (nothing else on the cores). Two epochs of each way (`contsup reproduce parallel_throughput`,
# seed 0), then one way's real run over the curves' 4 epochs (1F1B, ResNet-32, seed 0) to check the composed
# clock against a measured one:
#   bash benchmarks/parallel_throughput.sh runs/parallel-throughput runs/parallel-check
# A clock run stopped part-way must be deleted before rerunning (a resumed run's later epoch would pay a new
# process's start-up). The curves come from `contsup reproduce parallel --out runs/parallel` (any load, but not
# while this script runs); then
#   PYTHONPATH=src python benchmarks/parallel.py --curves runs/parallel --throughput runs/parallel-throughput \
#       --check runs/parallel-check/*
set -u
out=${1:-runs/parallel-throughput}
check=${2:-runs/parallel-check}
contsup=${CONTSUP:-contsup}  # e.g. CONTSUP="python -m contsup" (split into words)
mkdir -p "$out"
before=$(cut -d' ' -f1-3 /proc/loadavg)
$contsup reproduce parallel_throughput --out "$out" 2>&1 | tee -a "$out/sweep.log"
echo "$before before the first run, $(cut -d' ' -f1-3 /proc/loadavg) after the last" > "$out/load.txt"
$contsup reproduce parallel_throughput --recipe check --only arch=resnet32 --only parallel=1f1b --out "$check" \
    2>&1 | tee -a "$check.log"
echo "load average: $(cat "$out/load.txt"); after the check run: $(cut -d' ' -f1-3 /proc/loadavg)"
