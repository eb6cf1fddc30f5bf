#!/usr/bin/env bash
# The commands behind BENCHMARKS.md, on one GPU (device tool: nvidia-h100-x1), from a clean checkout:
#   cp -r ../shared/data .carry/   # here, once; .carry is git-ignored and travels with `carry`
#   bash benchmarks/run_all.sh .carry/data benchmarks/results
# Steps: fast-path checks and draft-step anatomy (~6 min), the pair (benchmarks/recipe.py, ~4 min), calibration and τ
# on every sampled prompt (~15 min over worker processes), tokens/s on the timing sample (~8 min), merge.
# On the device tool each step below fits one 10-minute call on the same warm machine (runs/pair is kept there);
# the τ phase resumes where a call stopped.
set -euo pipefail
data=${1:-.carry/data}
out=${2:-benchmarks/results}
bench="python benchmarks/run_benchmark.py --pair runs/pair --data $data --out $out"
pip install -q --no-deps --no-build-isolation -e .
python benchmarks/gpu_checks.py --out "$out"
[ -f runs/pair/recipe.json ] || python benchmarks/recipe.py --data "$data" --out runs/pair
$bench --phase calibrate
nvidia-cuda-mps-control -d 2>/dev/null || true   # lets the τ workers share the GPU concurrently (4x here)
$bench --phase tau --temperatures 0
$bench --phase tau --temperatures 1
$bench --phase timing --temperatures 0
$bench --phase timing --temperatures 1
$bench --phase merge
python benchmarks/roofline.py "$out/gpu_checks.json" "$out/latest.json" | tee "$out/roofline.md"
cp runs/pair/recipe.json "$out/recipe.json"
