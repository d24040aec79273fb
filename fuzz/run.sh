#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 25), seeded from the repository's own files.
#   fuzz/run.sh [SECONDS] [BUILD_DIR]      (build first: cmake --preset fuzz && cmake --build --preset fuzz)
# Prints one line per target (executions, corpus size); a crash, leak, timeout or out-of-memory
# leaves the input in BUILD_DIR/fuzz-findings/<target>/ and makes the script fail: minimize it, add
# it to fuzz/regressions/<target>/ (replayed by the unit tests), and fix the code.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_EACH="${1:-25}"
BUILD="${2:-$ROOT/build-fuzz}"

# Seeds: real files of each kind from the repository.
seeds() {
  case "$1" in
    safetensors) find "$ROOT/tests/fixtures" "$ROOT/assets" -name '*.safetensors' -size -2M ;;
    lora_config) find "$ROOT/tests/fixtures" "$ROOT/assets" -name 'adapter_config.json' -o -name 'lora_config.json' ;;
    tokenizer_json) find "$ROOT/tests/fixtures" "$ROOT/assets" -name 'tokenizer.json' -size -2M ;;
    sentencepiece) find "$ROOT/tests/fixtures" -name 'tokenizer.model' ;;
    chat_template) find "$ROOT/tests/fixtures/chat_templates" -name '*.jinja' ;;
    train_jsonl) find "$ROOT/tests/fixtures" "$ROOT/assets" -name '*.jsonl' -size -2M ;;
    bnb_state) find "$ROOT/fuzz/seeds/bnb_state" -type f ;;  # 16 x 16 NF4 (prefixed with its shape below)
    gptq_state) find "$ROOT/fuzz/seeds/gptq_state" -type f ;;  # 16 x 64 4-bit v1 (prefixed below)
    model_config) find "$ROOT/tests/fixtures" "$ROOT/assets" -name 'config.json' -size -64k ;;
    launch_env) find "$ROOT/fuzz/seeds/launch_env" -type f ;;
  esac
}
# A little-endian 32-bit length, as split2 (fuzz/fuzz_util.cpp) reads it.
le32() {
  local n=$1
  printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((n & 255)) $(((n >> 8) & 255)) \
    $(((n >> 16) & 255)) $(((n >> 24) & 255)))"
}
# Targets that read two parts (split2) get the file as the first part.
two_parts() { case "$1" in tokenizer_json | sentencepiece | chat_template) return 0 ;; *) return 1 ;; esac; }

status=0
for target in safetensors lora_config tokenizer_json sentencepiece chat_template train_jsonl bnb_state \
  gptq_state model_config launch_env; do
  corpus="$BUILD/fuzz-corpus/$target"
  findings="$BUILD/fuzz-findings/$target"
  mkdir -p "$corpus" "$findings"
  n=0
  while IFS= read -r f; do
    n=$((n + 1))
    if two_parts "$target"; then
      { le32 "$(stat -c %s "$f")"; cat "$f"; printf 'Hello, world!'; } >"$corpus/seed-$n"
    elif [ "$target" = bnb_state ]; then
      { printf '\x0f\x0f'; cat "$f"; } >"$corpus/seed-$n"
    elif [ "$target" = gptq_state ]; then
      { printf '\x01\x1f\x01\x0f\x3f'; cat "$f"; } >"$corpus/seed-$n"
    else
      cp "$f" "$corpus/seed-$n"
    fi
  done < <(seeds "$target")
  cp "$ROOT"/fuzz/regressions/"$target"/* "$corpus"/ 2>/dev/null || true
  log="$BUILD/fuzz-findings/$target.log"
  if "$BUILD/fuzz/fuzz_$target" "$corpus" -max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=4096 \
      -max_len=1048576 -print_final_stats=1 -artifact_prefix="$findings/" -seed=1 >"$log" 2>&1; then
    runs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "fuzz_$target: ${runs:-?} executions in ${SECONDS_EACH}s, no findings"
  else
    echo "fuzz_$target: FAILED (see $log; inputs in $findings/)"
    tail -n 30 "$log"
    status=1
  fi
done
exit $status
