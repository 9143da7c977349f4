#!/usr/bin/env bash
# `lmlab bench decode` at batch 1 with its llama.cpp row: installs the optional 'llamacpp' extra (llama-cpp-python,
# built from source for this CPU: no wheel exists for most platforms) into the project's venv, then runs the bench.
# Usage: bash benchmarks/decode_vs_llamacpp.sh [extra `lmlab bench decode` options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env >/dev/null
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "building llama-cpp-python (one time, ~10 min on 2 cores)..." >&2
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" .venv/bin/pip install -q "llama-cpp-python>=0.3.16"
fi
HF_HUB_OFFLINE=1 .venv/bin/lmlab bench decode --batch 1 --json benchmarks/results/decode_llamacpp.json "$@"
