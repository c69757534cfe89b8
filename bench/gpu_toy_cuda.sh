#!/usr/bin/env bash
# The toy pipeline's training and eval jobs on a GPU: `modelspec run specs/toy.yaml --until eval` with the
# training device set to cuda and bf16 compute (tokenizer, dataset, the trained teacher, generate, KD, QAT and the
# batched eval on the GPU), for a session lent one (the device tool). Writes the run's JSON summary and the
# train/qat/eval reports to $OUT (or bench/results/toy_cuda/).
#   PY=python3 bash bench/gpu_toy_cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results/toy_cuda}
mkdir -p "$OUT"
STORE=$(mktemp -d)/store
"$PY" -m runtime.cli run specs/toy.yaml --until eval --workdir "$STORE" --json \
    --set training.resources.device=cuda --set training.compute.precision=bf16 > "$OUT/toy_cuda_run.json"
for kind in teacher train qat eval generate; do
    for f in "$STORE"/jobs/$kind/*/report.json; do cp "$f" "$OUT/toy_cuda_$kind.json"; done
done
"$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print({j['id']: (j['action'], round(j.get('seconds') or 0, 1)) for j in r['jobs']})" "$OUT/toy_cuda_run.json"
