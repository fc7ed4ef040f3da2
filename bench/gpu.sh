#!/usr/bin/env bash
# One short GPU check (issue 17): the Llama-3.2-1B-shape build on CUDA and a demo-like search trial, with their times.
# Targets on an H100/H200-class GPU: task_arithmetic's 1B build < 0.05 s (its memory-traffic limit ~3 ms).
# Usage: bash bench/gpu.sh [extra bench_build options]     (run from anywhere; ~5-10 min incl. writing checkpoints)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TQDM_DISABLE=1
python - <<'PY'
import torch
assert torch.cuda.is_available(), "bench/gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False)"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
echo "== build: linear, task_arithmetic, ties, dare_ties at llama1b shape on cuda (fused kernels via torch.compile) =="
python bench/bench_build.py --size llama1b --device cuda --repeats 5 "$@"
echo "== one demo-like search on cuda: per-trial merge / forward / everything else =="
# conf=demo's tasks and genome with SmolLM2 (the demo specialists if cached, else noisy copies); conf=tiny if absent
python bench/bench_trial.py --setting smollm2 --trials 4 --naive-trials 0 --limit 12 --threads 4 device=cuda \
  || python bench/bench_trial.py --setting tiny --trials 4 --naive-trials 0 device=cuda
