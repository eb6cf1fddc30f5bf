#!/usr/bin/env bash
# Turn your own target + drafter (same tokenizer) and some text into a Hub-ready DynaSpec assistant.
# Each argument is a --data file, one domain in the report (txt: blank-line separated; jsonl: text / messages / turns).
# The models load on CUDA in bfloat16 where there is a GPU, else on the CPU in float32 (--device / --dtype override).
set -euo pipefail
dynaspec-hf calibrate \
  --target "${TARGET:-meta-llama/Llama-3.1-8B-Instruct}" \
  --drafter "${DRAFTER:-meta-llama/Llama-3.2-1B-Instruct}" \
  --data "$@" \
  --out "${OUT:-dynaspec-assistant}" \
  --num-clusters "${NUM_CLUSTERS:-256}" --continuation-tokens "${CONTINUATION_TOKENS:-64}"
