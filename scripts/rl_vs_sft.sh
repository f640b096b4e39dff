#!/usr/bin/env bash
# Does RL beat SFT on long documents? (issue 15; docs/results.md). One command, resumable:
#
#   scripts/rl_vs_sft.sh all          # every stage in order; rerun after a kill and it continues
#   scripts/rl_vs_sft.sh sft eval     # some stages
#
# Default model (SmolLM2-135M-Instruct), built-in ScisummNet split (seed 0: 751 train / 100 val /
# 100 test papers), prompts of 2,096 tokens = the first 2,048 tokens of each paper + the 48-token
# prompt template, summaries capped at 256 tokens. Every system is evaluated on the same 100 test
# papers (and 64 PubMed articles out of domain) by the same `sumrl eval` settings.
# Outputs: $OUT (runs/rl_vs_sft). A stage whose output exists is skipped; a killed training stage
# resumes from its last checkpoint. Seed: $SEED (0), recorded in every stage's config.
set -euo pipefail
cd "$(dirname "$0")/.."
SUMRL=${SUMRL:-.venv/bin/sumrl}
read -r -a SUMRL <<< "$SUMRL"
OUT=${OUT:-runs/rl_vs_sft}
SEED=${SEED:-0}
PROMPT=2096          # 2,048 document tokens + the 48-token template of the default model
CAP=256              # summary tokens (p95 of the train references is 245)
mkdir -p "$OUT"

again() {  # --resume when an earlier, killed run left checkpoints in $1, so it continues
  if compgen -G "$1/checkpoints/*" > /dev/null; then echo --resume; fi
}
timed() {  # timed NAME CMD...
  local name=$1; shift
  /usr/bin/time -f "$name: %e s wall, %M KB peak RSS" "$@"
}

for stage in "$@"; do
  case $stage in
    all) exec "$0" sft ;;
    sft)
      # LoRA SFT until the validation loss stops improving (at most 2 epochs = 376 steps of 4 papers), validation loss on 24
      # val papers every 20 steps, stop after 3 validations without improvement, publish the best.
      [ -f "$OUT/sft/sumrl_model.json" ] || timed sft "${SUMRL[@]}" sft --config recipes/sft_lora.yaml \
        --out "$OUT/sft" --seed "$SEED" --max-prompt-tokens $PROMPT --max-seq-len $((PROMPT + CAP)) \
        --max-target-tokens $CAP --batch-size 4 --steps 376 --lr 2e-4 --warmup-steps 10 \
        --eval-every 20 --val-examples 24 --val-generate 0 --early-stopping-patience 3 \
        --save-every 10 --no-progress $(again "$OUT/sft") ;;
    *)
      echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
