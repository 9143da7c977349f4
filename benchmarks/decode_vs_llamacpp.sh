#!/usr/bin/env bash
# `lmlab bench decode` at batch 1 with its llama.cpp row: installs the optional 'llamacpp' extra (llama-cpp-python,
# built from source for this CPU: no wheel exists for most platforms) into the project's venv, then runs the bench.
# Usage: bash benchmarks/decode_vs_llamacpp.sh [extra `lmlab bench decode` options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env >/dev/null
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "building llama-cpp-python (one time, ~10 min on 2 cores)..." >&2
  args="-DGGML_NATIVE=ON"
  if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    # A -march=native build uses ggml's AMX kernels, which segfaulted in decoding on a Sapphire Rapids host
    # (2026-12-02, llama-cpp-python 0.3.36; llama.cpp#20824): the host's ISA without AMX instead.
    args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    args+=" -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
    args+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  fi
  CMAKE_ARGS="${CMAKE_ARGS:-$args}" .venv/bin/pip install -q "llama-cpp-python>=0.3.16"
fi
HF_HUB_OFFLINE=1 .venv/bin/lmlab bench decode --batch 1 --json benchmarks/results/decode_llamacpp.json "$@"
