#!/usr/bin/env bash
# The benchmark behind BENCHMARKS.md, on one GPU (device tool: nvidia-h100-x1), from a clean checkout:
#   cp -r ../shared/data .carry/   # here, once; .carry is git-ignored and travels with `carry`
#   bash benchmarks/run_all.sh .carry/data benchmarks/results [SECONDS]
# Steps: the pair (benchmarks/recipe.py, ~4 min), calibration (~15 s), τ on every sampled prompt at T = 1 and T = 0
# (~14 min over worker processes, both temperatures in one pool), tokens/s on the timing sample (two passes over all
# methods, ~8.5 min), merge: 3 calls of 575 s on one warm machine, ~29 min held.
# Every step is skipped once its product exists in runs/pair, and the τ step resumes where it stopped, so on the
# device tool the same command with SECONDS = the call's limit, repeated on the warm machine, goes on where the
# last call stopped: a step that would not fit in the SECONDS left is not started.
# The fast-path checks and draft-step anatomy are a separate command: python benchmarks/gpu_checks.py --out DIR.
set -uo pipefail
data=${1:-.carry/data}
out=${2:-benchmarks/results}
budget=${3:-1000000}
pair=runs/pair
bench="python benchmarks/run_benchmark.py --pair $pair --data $data --out $out --timing-per-category 1 --timing-rounds 2"

left() { echo $((budget - SECONDS)); }
step() {  # step PRODUCT SECONDS_NEEDED COMMAND...: run COMMAND unless PRODUCT exists or too little time is left
    local product=$1 need=$2
    shift 2
    [ -e "$product" ] && return 0
    if [ "$(left)" -lt "$need" ]; then
        echo "run_all: $(left) s left, not starting: $*"
        exit 0
    fi
    "$@" || { echo "run_all: failed: $*"; exit 1; }
}
recipe() { python benchmarks/recipe.py --data "$data" --out $pair 2>&1 | grep -v "it/s"; }
tau() { timeout $(($(left) - 5)) $bench --phase tau --temperatures 1 0 2>&1 | grep "τ for\|Error\|capture failed"; [ -e $pair/tau-T1.0,0.0.json ] || { echo "run_all: τ goes on in the next call"; exit 0; }; }

pip install -q --no-deps --no-build-isolation -e . 2>/dev/null
nvidia-cuda-mps-control -d 2>/dev/null || true  # lets the τ workers share the GPU concurrently (4x here)
step $pair/recipe.json 300 recipe
step $pair/calibration.json 60 $bench --phase calibrate
step $pair/tau-T1.0,0.0.json 60 tau
step $pair/timing-T1.0,0.0.json 540 $bench --phase timing --temperatures 1 0
$bench --phase merge > /dev/null && cp $pair/recipe.json "$out/recipe.json" && cat "$out/summary.md"
