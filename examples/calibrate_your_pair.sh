#!/usr/bin/env bash
# Turn your own target + drafter (same tokenizer) and some text into a Hub-ready DynaSpec assistant.
# Each --data file is one domain in the report (txt: blank-line separated; jsonl: text / messages / turns).
set -euo pipefail
dynaspec-hf calibrate \
  --target "${TARGET:-meta-llama/Llama-3.1-8B-Instruct}" \
  --drafter "${DRAFTER:-meta-llama/Llama-3.2-1B-Instruct}" \
  --data "$@" \
  --out "${OUT:-dynaspec-assistant}" \
  --num-clusters 256 --continuation-tokens 64 --dtype bfloat16 --device cuda
