#!/usr/bin/env bash
# The GPU measurement of issue 16, as one short script for a session that is lent a GPU (the device tool):
# the KD step at ~125M and ~1B parameters in bf16 with sdpa, per-layer recomputation and the chunked loss,
# tokens/s, MFU against the dense bf16 peak, and peak memory against the compiler's estimate.
#   bash bench/gpu_kd_step.sh            # writes bench/results/kd_step_cuda_{125m,1b}.json (and copies to $OUT)
# About 3 minutes on an H100/H200 once torch is installed. Needs: the repository's venv (pip install -e '.[test]'
# with a CUDA build of torch 2.13), or on the device tool's machine (its python3 has torch; pydantic and
# liger-kernel travel as wheels in .whl/: `PY=python3 bash bench/gpu_kd_step.sh` after installing them there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" bench/bench_kd_step.py --device cuda --arch 125m --seq-len 2048 --micro-batch 8 --steps 20 --warmup 5 \
    --out bench/results/kd_step_cuda_125m.json
"$PY" bench/bench_kd_step.py --device cuda --arch 1b --seq-len 4096 --micro-batch 2 --steps 10 --warmup 3 \
    --out bench/results/kd_step_cuda_1b.json
"$PY" bench/bench_kd_step.py --device cuda --arch 1b --seq-len 16384 --micro-batch 1 --steps 3 --warmup 1 \
    --out bench/results/kd_step_cuda_1b_16k.json
# the part a fused kernel replaces (output layer + CE), chunked torch head vs Liger-Kernel, at Llama-3.2-1B's head
"$PY" bench/bench_loss_head_cuda.py --out bench/results/loss_head_cuda.json
if [ -n "${OUT:-}" ]; then cp bench/results/kd_step_cuda_*.json bench/results/loss_head_cuda.json "$OUT"/; fi
