#!/usr/bin/env bash
# Training speed, memory and accuracy of prompt2lora against PyTorch + PEFT, side by side in one
# run (the two alternate, so that load on a shared machine falls on both alike): minilm-l6 and
# e5-small, LoRA rank 8 on query and value, batch 32, max length 32, 2 threads.
#   short: 100 SNIPS training messages per intent, 3 epochs (speed and memory);
#   full:  all SNIPS training messages, 1 epoch (speed, and macro-F1 of a trained model).
# Prints one JSON line per run; bench/results/train.md holds the table.
#
# usage: SNIPS=... PYTHON=... bench/train/compare.sh [short|full]...
set -euo pipefail
cd "$(dirname "$0")/../.."
SNIPS=${SNIPS:?set SNIPS to the folder with the SNIPS train.jsonl and test.jsonl}
PYTHON=${PYTHON:?set PYTHON to an interpreter with torch, transformers and peft}
MODELS=${MODELS:-"minilm-l6 e5-small"}
cargo build --release -q -p prompt2lora-encoder --example train_bench
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(short full)
for setting in "${settings[@]}"; do
  case $setting in
    short) per_intent=100 epochs=3 ;;
    full) per_intent=100000 epochs=1 ;;
    *) echo "unknown setting $setting" >&2; exit 2 ;;
  esac
  for model in $MODELS; do
    dir=$(target/release/prompt2lora models fetch "$model" | cut -f2)
    args=("$dir" "$SNIPS/train.jsonl" "$SNIPS/test.jsonl" "$per_intent" 8 "$epochs" 32 32 2)
    echo "# $setting $model"
    target/release/examples/train_bench "${args[@]}" "bench/out/train-$model" | tail -1
    OMP_WAIT_POLICY=PASSIVE "$PYTHON" bench/train/peft_baseline.py "${args[@]}" 2>/dev/null | tail -1
  done
done
