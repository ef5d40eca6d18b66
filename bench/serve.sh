#!/usr/bin/env bash
# HTTP throughput of `prompt2lora serve` on loopback: wrk at 64 connections, one message per
# request, against the SNIPS adapter that bench/predict.sh trains. Reports requests/s, p50/p99
# latency and errors (non-200 answers and socket errors), and from /metrics how many texts the
# batcher put into each classifier call. Writes bench/results/eval-serve.md (with
# bench/predict.sh's part if it ran).
#
# usage: bench/serve.sh
# env:   CONNECTIONS (64), DURATION (20s), THREADS (2: candle threads), PORT (8791)
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-20s}
THREADS=${THREADS:-2}
PORT=${PORT:-8791}
OUT=bench/out/serve
ADAPTER=bench/out/predict/run/adapter
BIN=target/release/prompt2lora
mkdir -p "$OUT" bench/results

command -v wrk > /dev/null || { apt-get update -qq && apt-get install -y -qq wrk > /dev/null; }
[ -f "$ADAPTER/labels.json" ] || bench/predict.sh --setup-only
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p prompt2lora-cli

RAYON_NUM_THREADS=$THREADS "$BIN" serve "snips=$ADAPTER" --addr "127.0.0.1:$PORT" 2> "$OUT/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break
  sleep 0.1
done

# Warm up, then measure.
wrk -t2 -c8 -d3s -s bench/serve_post.lua "http://127.0.0.1:$PORT/v1/classify" > /dev/null
curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics-before.txt"
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/serve_post.lua \
  "http://127.0.0.1:$PORT/v1/classify" | tee "$OUT/wrk.txt"
curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics-after.txt"
kill -TERM $SERVER
wait $SERVER
trap - EXIT

python3 - "$OUT" "$CONNECTIONS" "$DURATION" "$THREADS" <<'PY' | tee "$OUT/section.md"
import re, sys
out, connections, duration, threads = sys.argv[1:]
wrk = open(f"{out}/wrk.txt").read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", wrk).group(1))
def ms(label):
    v, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", wrk).groups()
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
total = int(re.search(r"(\d+) requests in", wrk).group(1))
non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)) else 0
socket = sum(map(int, m.groups())) if (m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", wrk)) else 0
def metric(name, path):
    m = re.search(rf'^{name}\{{model="snips"\}} ([\d.e+]+)$', open(path).read(), re.M)
    return float(m.group(1)) if m else 0.0
texts = metric("prompt2lora_batch_texts_sum", f"{out}/metrics-after.txt") - metric("prompt2lora_batch_texts_sum", f"{out}/metrics-before.txt")
calls = metric("prompt2lora_batch_texts_count", f"{out}/metrics-after.txt") - metric("prompt2lora_batch_texts_count", f"{out}/metrics-before.txt")
print("### serve: HTTP on loopback (wrk, one message per request)\n")
print("| connections | duration | candle threads | requests | requests/s | p50 ms | p99 ms | non-200 | socket errors | texts per classifier call |")
print("|---|---|---|---|---|---|---|---|---|---|")
print(f"| {connections} | {duration} | {threads} | {total} | {rps:.0f} | {ms(50):.2f} | {ms(99):.2f} | {non_2xx} | {socket} | {texts / max(calls, 1):.1f} |")
PY

# The results page: both sections, whichever exist, with the machine they ran on.
{
  echo "# eval, predict and serve benchmarks"
  echo
  echo "Commands: \`bench/predict.sh\`, \`bench/serve.sh\`. Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(date -u +%Y-%m-%d)."
  for section in bench/out/predict/section.md bench/out/serve/section.md; do
    if [ -f "$section" ]; then echo; cat "$section"; fi
  done
} > bench/results/eval-serve.md
