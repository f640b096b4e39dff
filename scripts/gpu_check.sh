#!/usr/bin/env bash
# The prepared GPU check (docs/scale.md, "One GPU"): SFT, GRPO and PPO steps of sumrl's engines in
# bf16 (SDPA, or flash attention 2 when installed) at 2k- and 8k-token prompts on random-initialised
# SmolLM2-135M / Qwen2.5-0.5B / Qwen2.5-1.5B configurations; prints seconds per stage, tokens/s,
# peak GPU memory and MFU. Sized for 8 minutes on one H100/H200 (the driver stops starting new
# cases after --budget-s, 400 s here), no internet needed: no weights are loaded.
#
#   bash scripts/gpu_check.sh                  # on the GPU machine, from a copy of this repository
#   bash scripts/gpu_check.sh --dry-run        # anywhere: CPU, tiny model (tests/test_gpu_check.py)
#   bash scripts/gpu_check.sh --trainers       # then also the trainers end to end through the CLI
#                                              # (benchmarks/gpu_trainers.py: needs runs/gpu_tokenizer,
#                                              # written by `benchmarks/gpu_trainers.py --write-tokenizer`)
#
# Needs torch, transformers and peft (the GPU machine has them). If one is missing and a folder
# wheelhouse/ is present (pip download ... -d wheelhouse, < 64 MiB), it is installed from there
# without the network. Output: the table on stdout and runs/gpu_check.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, transformers, peft" 2>/dev/null; then
  if [ -d wheelhouse ]; then
    echo "gpu_check: installing what is missing from wheelhouse/ (no network)"
    "$PY" -m pip install --no-index --find-links wheelhouse torch transformers peft
  else
    echo "gpu_check: torch, transformers and peft are needed (and no wheelhouse/ folder is here)" >&2
    exit 2
  fi
fi
TRAINERS=0
DRY=()
ARGS=()
for a in "$@"; do
  if [ "$a" = --trainers ]; then TRAINERS=1; else ARGS+=("$a"); fi
  if [ "$a" = --dry-run ]; then DRY=(--dry-run); fi
done
mkdir -p runs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
rc=0
"$PY" benchmarks/gpu_check.py --budget-s 400 --out runs/gpu_check.jsonl "${ARGS[@]}" || rc=$?
if [ $TRAINERS = 1 ]; then
  # the ROUGE reward's stemmer is nltk's (pure Python; regex is binary: wheels for several Pythons)
  if ! "$PY" -c "import nltk" 2>/dev/null && [ -d wheelhouse ]; then
    echo "gpu_check: installing nltk from wheelhouse/ (no network)"
    "$PY" -m pip install -q --no-index --find-links wheelhouse nltk || true
  fi
  "$PY" benchmarks/gpu_trainers.py "${DRY[@]}" --out "${TMPDIR:-/tmp}/sumrl_gpu_trainers" || rc=$?
  cp "${TMPDIR:-/tmp}/sumrl_gpu_trainers/rows.jsonl" runs/gpu_trainers.jsonl 2>/dev/null || true
fi
exit $rc
