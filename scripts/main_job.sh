#!/usr/bin/env bash
# The main job: LoRA fine-tuning of the embedded demo model (assets/demo/model, a 0.95M-parameter Llama
# pretrained by tools/make-demo) on the embedded question/answer data, into a PEFT adapter folder.
#   scripts/main_job.sh [OUT_DIR]      (default out/demo-adapter; needs scripts/setup.sh first)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/out/demo-adapter}"
DEMO="$ROOT/assets/demo"
exec "$ROOT/build/peft" train \
  --model "$DEMO/model" \
  --data "$DEMO/data/train.jsonl" \
  --eval-data "$DEMO/data/eval.jsonl" \
  --config "$DEMO/lora_config.json" \
  --out "$OUT" \
  --steps 120 --batch-size 16 --lr 3e-3 --lr-scheduler cosine --warmup-steps 5 \
  --eval-every 40 --log-every 10 --seed 42
