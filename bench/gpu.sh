#!/usr/bin/env bash
# Every GPU check and benchmark in one command, on the lent machine, from a copy of the repo:
#   bash bench/gpu.sh [OUT] [--sections parity,compiled,...]      (default OUT: bench/results/gpu-<date>)
# Needs only what that machine has (torch, transformers, safetensors, tokenizers, typer, rich,
# pandas, jinja2): minirun is imported from the checkout, not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/gpu-$(date +%F)}"
shift $(( $# > 0 ? 1 : 0 ))
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 "${PYTHON:-python3}" -m minirun.bench.gpu --out "$out" "$@"
