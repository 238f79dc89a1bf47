#!/usr/bin/env bash
# The CPU benchmark set: SmolLM2-135M's shape with random weights, float32, 128-token prompts,
# 64 new tokens, batch 1. origin against transformers; then flex and avg with 5 paraphrases.
# Every run also measures minirun uncompiled (--compare eager: dense masks + SDPA), so one JSON shows
# what compilation buys (or the compiler error, see bench/README.md). Each run gets an empty inductor
# cache, so `warmup_s` is the first-ever compile.
# Usage: bench/run_cpu.sh [extra `minirun bench` flags, e.g. --repeats 3]
set -euo pipefail
cd "$(dirname "$0")/.."
out="bench/results"
day="$(date +%Y-%m-%d)"
common=(--random-weights smollm2-135m --dtype float32 --device cpu --prompt-tokens 128 --new-tokens 64 --batch 1)
TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" minirun bench "${common[@]}" --method origin --compare transformers,eager --json "$out/cpu-$day-origin.json" "$@"
for method in flex avg; do
  TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" minirun bench "${common[@]}" --method "$method" --num-paraphrases 5 --compare eager \
    --json "$out/cpu-$day-$method.json" "$@"
done
