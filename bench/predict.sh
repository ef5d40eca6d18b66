#!/usr/bin/env bash
# Predict speed of prompt2lora against PyTorch + transformers running the same adapter merged
# into its base weights, side by side in one run, on the SNIPS test messages:
# - throughput: messages/s at batch 32 over the whole message file (model load excluded);
# - single-message latency p50/p99: one message at a time (prompt2lora through its stdin/stdout
#   pipe, PyTorch in process).
# Trains the adapter first (minilm-l6, a stratified subset of SNIPS train) unless it exists,
# and scores it on the SNIPS test set with `prompt2lora eval`.
# Writes bench/results/eval-serve.md (with bench/serve.sh's part if it ran) and raw JSON under
# bench/out/predict/.
#
# usage: bench/predict.sh [--setup-only]
# env:   SNIPS (folder with train.jsonl and test.jsonl), PER_INTENT (150), EPOCHS (3),
#        THREADS ("1 2"), REPEAT (3: copies of the 700 test messages for throughput),
#        PYTHON (an interpreter with torch, transformers, safetensors; default bench/.venv),
#        SKIP_BUILD (set: use the existing target/release/prompt2lora)
set -euo pipefail
cd "$(dirname "$0")/.."

SNIPS=${SNIPS:?set SNIPS to the folder that holds the SNIPS train.jsonl and test.jsonl}
PER_INTENT=${PER_INTENT:-150}
EPOCHS=${EPOCHS:-3}
THREADS=${THREADS:-"1 2"}
REPEAT=${REPEAT:-3}
OUT=bench/out/predict
ADAPTER=$OUT/run/adapter
BIN=target/release/prompt2lora
mkdir -p "$OUT" bench/results

[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p prompt2lora-cli
[ -x "$BIN" ] || { echo "no $BIN" >&2; exit 2; }

# 1. The adapter: a task file for SNIPS' seven intents and a stratified training subset.
if [ ! -f "$ADAPTER/labels.json" ]; then
  cat > "$OUT/task.toml" <<'TOML'
name = "snips"
language = "en"

[[intents]]
name = "AddToPlaylist"
description = "Add a song, artist or album to a playlist."
[[intents]]
name = "BookRestaurant"
description = "Reserve a table at a restaurant."
[[intents]]
name = "GetWeather"
description = "Ask about the weather or the forecast."
[[intents]]
name = "PlayMusic"
description = "Play a song, artist, album or genre."
[[intents]]
name = "RateBook"
description = "Give a rating to a book."
[[intents]]
name = "SearchCreativeWork"
description = "Find a film, show, song, book or game by name."
[[intents]]
name = "SearchScreeningEvent"
description = "Find film showtimes or cinemas."

[train]
student = "minilm-l6"
max_length = 64
TOML
  python3 - "$SNIPS/train.jsonl" "$OUT/train.jsonl" "$PER_INTENT" <<'PY'
import json, random, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
random.Random(0).shuffle(rows)
seen, out = {}, open(sys.argv[2], "w")
for r in rows:
    if seen.get(r["label"], 0) < int(sys.argv[3]):
        seen[r["label"]] = seen.get(r["label"], 0) + 1
        out.write(json.dumps({"text": r["text"], "intent": r["label"]}) + "\n")
PY
  "$BIN" train "$OUT/train.jsonl" --task "$OUT/task.toml" --out "$ADAPTER" --epochs "$EPOCHS" --merge
fi
MERGED=$ADAPTER/merged
[ -f "$MERGED/model.safetensors" ] || { echo "no merged weights in $MERGED (train --merge)" >&2; exit 2; }
[ "${1:-}" = "--setup-only" ] && exit 0

# 2. Accuracy on the SNIPS test set, for the record.
"$BIN" -q eval "$ADAPTER" --data "$SNIPS/test.jsonl" --out "$OUT/eval" > "$OUT/eval.txt"

# 3. Messages: the test texts, repeated.
python3 - "$SNIPS/test.jsonl" "$OUT/messages.txt" "$REPEAT" <<'PY'
import json, sys
texts = [json.loads(l)["text"].replace("\n", " ") for l in open(sys.argv[1])]
open(sys.argv[2], "w").write("".join(t + "\n" for t in texts * int(sys.argv[3])))
PY
MESSAGES=$(wc -l < "$OUT/messages.txt")

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
    bench/.venv/bin/pip install -q torch transformers safetensors
  fi
  PYTHON=bench/.venv/bin/python
fi

# 4. Both engines at each thread count, interleaved so that machine load hits both alike, each
#    with batches in input order and with windows of 256 messages sorted by length first.
RAW=$OUT/raw.jsonl
: > "$RAW"
for t in $THREADS; do
  for window in 32 256; do
    # candle's CPU kernels run on rayon's pool; RAYON_NUM_THREADS sets its size.
    log=$(RAYON_NUM_THREADS=$t "$BIN" predict "$ADAPTER" "$OUT/messages.txt" --format lines --batch-size 32 \
          --sort-window $window -o "$OUT/predictions.jsonl" 2>&1 >/dev/null | grep "messages in")
    rate=$(echo "$log" | sed -E 's/.*\(([0-9]+)\/s;.*/\1/')
    echo "{\"engine\": \"prompt2lora\", \"threads\": $t, \"sort_window\": $window, \"messages\": $MESSAGES, \"messages_per_second\": $rate}" >> "$RAW"
    # A window of 32 is batches in input order for PyTorch (--sort-window 0).
    torch_window=$([ "$window" = 32 ] && echo 0 || echo "$window")
    latency_messages=$([ "$window" = 32 ] && echo 300 || echo 0)
    OMP_WAIT_POLICY=PASSIVE "$PYTHON" bench/predict_torch.py "$MERGED" "$OUT/messages.txt" --threads "$t" \
      --sort-window "$torch_window" --latency-messages "$latency_messages" \
      --compare "$OUT/predictions.jsonl" >> "$RAW"
  done
  latency=$(RAYON_NUM_THREADS=$t python3 bench/predict_latency.py "$BIN" "$ADAPTER" "$OUT/messages.txt")
  echo "{\"engine\": \"prompt2lora\", \"threads\": $t, \"latency\": $latency}" >> "$RAW"
done

# 5. The table.
python3 - "$RAW" "$OUT/eval/metrics.json" <<'PY' > "$OUT/section.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
m = json.load(open(sys.argv[2]))["student"]
print("### predict: prompt2lora vs PyTorch + transformers (same adapter, merged)\n")
print(f"minilm-l6 adapter on the SNIPS test set: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} ({m['support']} messages).\n")
print("Throughput, batches of 32 (\"input order\": batches cut in the order of the file; \"sorted\": every")
print("256 messages sorted by token count first, as `prompt2lora predict` does by default):\n")
print("| threads | order | prompt2lora messages/s | PyTorch messages/s | ratio | same intent |")
print("|---|---|---|---|---|---|")
def order(r):
    return "input order" if r.get("sort_window", 0) in (0, 32) else "sorted"
ours = {(r["threads"], order(r)): r for r in rows if r["engine"] == "prompt2lora" and "messages_per_second" in r}
theirs = {(r["threads"], order(r)): r for r in rows if r["engine"] != "prompt2lora"}
for key in sorted(ours):
    a, b = ours[key], theirs[key]
    print(f"| {key[0]} | {key[1]} | {a['messages_per_second']:.0f} | {b['messages_per_second']:.0f} | "
          f"{a['messages_per_second'] / b['messages_per_second']:.2f}x | {b['agreement_with_prompt2lora']:.4f} |")
print("\nSingle-message latency (prompt2lora through its stdin/stdout pipe, PyTorch in process):\n")
print("| engine | threads | p50 ms | p99 ms |")
print("|---|---|---|---|")
for r in rows:
    lat = r.get("latency", r)
    if "latency_ms_p50" in lat:
        print(f"| {r['engine']} | {r['threads']} | {lat['latency_ms_p50']:.2f} | {lat['latency_ms_p99']:.2f} |")
PY
cat "$OUT/section.md"

# The results page: both sections, whichever exist, with the machine they ran on.
{
  echo "# eval, predict and serve benchmarks"
  echo
  echo "Commands: \`bench/predict.sh\`, \`bench/serve.sh\`. Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(date -u +%Y-%m-%d)."
  for section in bench/out/predict/section.md bench/out/serve/section.md; do
    if [ -f "$section" ]; then echo; cat "$section"; fi
  done
} > bench/results/eval-serve.md
