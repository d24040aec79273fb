#!/usr/bin/env bash
# A longer fuzz campaign: every target one after another for its own time, on the corpora that
# fuzz/run.sh grew (run that first), the slow text targets seeded only with files under 32 KB.
#   fuzz/campaign.sh [SCALE] [BUILD_DIR] [OUT_DIR]     SCALE multiplies the per-target seconds (default 1)
# Writes OUT_DIR/summary.txt (one line per target: executions, seconds, peak RSS, findings) and each
# target's libFuzzer log; findings go to OUT_DIR/findings-<target>/.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCALE="${1:-1}"
BUILD="${2:-$ROOT/build-fuzz}"
OUT="${3:-$BUILD/campaign}"
mkdir -p "$OUT"
: >"$OUT/summary.txt"
status=0
for spec in safetensors:600 lora_config:480 bnb_state:480 gptq_state:480 model_config:600 tokenizer_json:360 \
  sentencepiece:360 chat_template:360 train_jsonl:360 launch_env:120; do
  t=${spec%%:*}
  s=$(( ${spec##*:} * SCALE ))
  c="$OUT/corpus-$t"
  mkdir -p "$c" "$OUT/findings-$t"
  case $t in
    tokenizer_json | sentencepiece | train_jsonl | chat_template)
      find "$BUILD/fuzz-corpus/$t" -type f -size -32k -exec cp {} "$c"/ \;
      max_len=32768 ;;
    *)
      cp "$BUILD/fuzz-corpus/$t"/* "$c"/ 2>/dev/null
      max_len=1048576 ;;
  esac
  cp "$ROOT/fuzz/regressions/$t"/* "$c"/ 2>/dev/null
  "$BUILD/fuzz/fuzz_$t" "$c" -max_total_time="$s" -timeout=20 -rss_limit_mb=4096 -max_len="$max_len" \
    -print_final_stats=1 -artifact_prefix="$OUT/findings-$t/" -seed=7 >"$OUT/$t.log" 2>&1 || status=1
  runs=$(grep -m1 'stat::number_of_executed_units' "$OUT/$t.log" | awk '{print $2}')
  rss=$(grep -m1 'stat::peak_rss_mb' "$OUT/$t.log" | awk '{print $2}')
  echo "$t runs=${runs:-?} seconds=$s peak_rss_mb=${rss:-?} findings=$(ls "$OUT/findings-$t" | wc -l)" \
    | tee -a "$OUT/summary.txt"
done
exit $status
