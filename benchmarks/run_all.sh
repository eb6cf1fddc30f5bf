#!/usr/bin/env bash
# The benchmark behind BENCHMARKS.md, on one GPU (device tool: nvidia-h100-x1), from a clean checkout:
#   cp -r ../shared/data .carry/   # here, once; .carry is git-ignored and travels with `carry`
#   bash benchmarks/run_all.sh .carry/data benchmarks/results [SECONDS] [run_benchmark.py options...]
# (e.g. --no-trees, or --methods 'full vocabulary' 'DynaSpec 1/16': each further argument is passed on as given)
# Steps: the pair (benchmarks/recipe.py: the target, ~7.5 min, then the drafter, ~2.5 min), calibration (~4 min, started with 6 left), τ on
# every sampled prompt at T = 0 and T = 1 (worker processes, both temperatures in one pool), tokens/s on the timing
# sample, merge: calls of 575 s back to back on one warm machine, inside the 30 minutes a machine is held.
# Every step is skipped once its product exists in runs/pair, and the τ and timing steps resume where they stopped,
# so on the device tool the same command with SECONDS = the call's limit, repeated on the warm machine, goes on
# where the last call stopped. Each call ends by merging what exists into the results folder (a stopped timing with
# the rounds it finished), so a hold that ends early still returns every finished measurement.
# Exactness on the GPU is `python -m pytest -m gpu tests/gpu`; bf16 agreement and the draft-step anatomy are
# `python benchmarks/gpu_checks.py --out DIR`.
set -uo pipefail
data=${1:-.carry/data}
out=${2:-benchmarks/results}
budget=${3:-1000000}
shift $(($# < 3 ? $# : 3))
pair=runs/pair
bench=(python benchmarks/run_benchmark.py --pair $pair --data "$data" --out "$out" --timing-per-category 1
       --timing-rounds 2 "$@")

left() { echo $((budget - SECONDS)); }
merge() {  # whatever exists so far into $out: the pair's report, and the results once τ is in
    cp $pair/recipe.json "$out/recipe.json" 2>/dev/null
    cp $pair/gpu_clocks.csv "$out/gpu_clocks.csv" 2>/dev/null  # the timing's SM clocks (`run_benchmark.gpu_clocks`)
    [ -e $pair/tau-T0.0,1.0.json ] && "${bench[@]}" --phase merge > /dev/null
}
step() {  # step PRODUCT SECONDS_NEEDED COMMAND...: run COMMAND unless PRODUCT exists or too little time is left
    local product=$1 need=$2
    shift 2
    [ -e "$product" ] && return 0
    if [ "$(left)" -lt "$need" ]; then
        echo "run_all: $(left) s left, not starting: $*"
        merge
        exit 0
    fi
    "$@" || { echo "run_all: failed: $*"; exit 1; }
}
recipe() { python benchmarks/recipe.py --data "$data" --out $pair --phase "$1" 2>&1 | grep -v "it/s\|s/it"; }
resumable() {  # resumable PRODUCT COMMAND...: run COMMAND until the time is up; the next call goes on
    local product=$1
    shift
    timeout $(($(left) - 25)) "$@" 2>&1 | grep "τ for\|timed\|Error\|capture failed"
    [ -e "$product" ] || { echo "run_all: goes on in the next call: $*"; merge; exit 0; }
}

pip install -q --no-deps --no-build-isolation -e . 2>/dev/null
nvidia-cuda-mps-control -d 2>/dev/null || true  # lets the τ workers share the GPU concurrently (4x here)
mkdir -p "$out"
step $pair/target.json 480 recipe target
step $pair/recipe.json 200 recipe drafter
step $pair/calibration.json 360 "${bench[@]}" --phase calibrate
step $pair/tau-T0.0,1.0.json 90 resumable $pair/tau-T0.0,1.0.json "${bench[@]}" --phase tau --temperatures 0 1
step $pair/timing-T0.0,1.0.json 90 resumable $pair/timing-T0.0,1.0.json "${bench[@]}" --phase timing --temperatures 0 1
merge && cat "$out/summary.md"
