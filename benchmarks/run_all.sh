#!/usr/bin/env bash
# The one command behind BENCHMARKS.md, on one GPU (device tool: nvidia-h100-x1), from a clean checkout:
#   cp -r ../shared/data .carry/   # here, once; .carry is git-ignored and travels with `carry`
#   bash benchmarks/run_all.sh .carry/data benchmarks/results
# Trains the pair (benchmarks/recipe.py, ~4 min), then calibrates and measures (benchmarks/run_benchmark.py,
# ~9 min). On the device tool each half fits one 10-minute call: run the recipe, then the benchmark on the same
# warm machine (the pair is kept in the git-ignored runs/pair).
set -euo pipefail
data=${1:-.carry/data}
out=${2:-benchmarks/results}
pip install -q --no-deps --no-build-isolation -e .
[ -f runs/pair/recipe.json ] || python benchmarks/recipe.py --data "$data" --out runs/pair
python benchmarks/run_benchmark.py --pair runs/pair --data "$data" --out "$out" --per-category 3 --max-new-tokens 128
cp runs/pair/recipe.json "$out/recipe.json"
