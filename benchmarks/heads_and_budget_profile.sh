#!/usr/bin/env bash
# Step peak memory and step time of every head of the heads preset (R0, R1E at K = 16, beside E2E in the same
# run), of HPFF's cascade against the same 2c2f heads isolated (docs/heads.md), of HPFF as released (and its heads isolated), of the cascade over AugLocal heads and of what a user would do instead (E2E at batch 32; E2E with gradient checkpointing), ResNet-32 on
# Fashion-MNIST-sized inputs (1x28x28), as docs/results.md reports them. Run it on a quiet machine:
#   bash benchmarks/heads_and_budget_profile.sh docs/results/profile
# Each `contsup profile` call writes profile.{csv,json,png} into its own folder and prints its table.
set -euo pipefail
out=${1:-runs/profile}
common=(--arch resnet32 --input 1x28x28 --device cpu --threads 1 --warmup 2 --steps 5)
contsup profile "${common[@]}" -K 1,16 --contexts R0,R1E --batch-size 128 --out "$out/head-1c2f"
contsup profile "${common[@]}" -K 1,16 --contexts R0,R1E --batch-size 128 --head auglocal --out "$out/head-auglocal"
contsup profile "${common[@]}" -K 1,16 --contexts E --batch-size 128 --head auglocal --out "$out/head-auglocal-e"
contsup profile "${common[@]}" -K 1,16 --contexts R0,R1E --batch-size 128 --man-momentum 0.995 --out "$out/head-man"
contsup profile "${common[@]}" -K 1,16 --contexts R0,R1E --batch-size 128 --head-patches 2 --out "$out/head-pff2"
contsup profile "${common[@]}" -K 1,16 --contexts R0,R1E --batch-size 128 --head auglocal --man-momentum 0.995 \
    --out "$out/head-pair"
contsup profile "${common[@]}" -K 1,16 --contexts R0 --batch-size 128 --head 2c2f --out "$out/head-2c2f"
contsup profile "${common[@]}" -K 1,16 --contexts R0 --batch-size 128 --head 2c2f --cascade 0.999 --out "$out/head-2c2f-cascade"
hpff=(--head 2c2f --recon 5,0.5,0,0 --recon-schedule hpff --recon-patches 2)
contsup profile "${common[@]}" -K 1,16 --contexts R0 --batch-size 128 "${hpff[@]}" --out "$out/hpff-isolated"
contsup profile "${common[@]}" -K 1,16 --contexts R0 --batch-size 128 "${hpff[@]}" --cascade 0.999 --out "$out/hpff"
contsup profile "${common[@]}" -K 1,16 --contexts R0 --batch-size 128 --head auglocal --cascade 0.999 --out "$out/head-auglocal-cascade"
contsup profile "${common[@]}" -K 1,16 --contexts R1E --batch-size 128 --checkpoint-segments 0,sqrt,16 --out "$out/e2e-checkpointed"
contsup profile "${common[@]}" -K 1,16 --contexts R1E --batch-size 32 --out "$out/batch-32"
