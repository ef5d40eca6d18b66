#!/usr/bin/env bash
# Requests per second of the HTTP teacher against a local OpenAI-compatible server that answers
# after a fixed delay, at several concurrencies, side by side with Python's openai.AsyncOpenAI.
# Writes bench/results/teacher-http.md.
#
# usage: bench/teacher_http.sh [PYTHON]   (PYTHON: an interpreter with the `openai` package;
#        default: bench/.venv/bin/python, then python3)
# env:   LATENCY_MS (200), RUN_SECONDS (10), CONCURRENCY ("1 16 64 256"), PORT (8787),
#        SKIP_BUILD (set: use the binary already built)
set -euo pipefail
cd "$(dirname "$0")/.."

LATENCY_MS=${LATENCY_MS:-200}
SECONDS_PER_RUN=${RUN_SECONDS:-10}
CONCURRENCY=${CONCURRENCY:-"1 16 64 256"}
PORT=${PORT:-8787}
PYTHON=${1:-}
if [ -z "$PYTHON" ]; then
  if [ -x bench/.venv/bin/python ] && bench/.venv/bin/python -c "import openai" 2>/dev/null; then
    PYTHON=bench/.venv/bin/python
  else
    PYTHON=python3
  fi
fi

[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p prompt2lora-teacher --example teacher_http_bench
BIN=target/release/examples/teacher_http_bench
URL="http://127.0.0.1:$PORT/v1"

"$BIN" serve --port "$PORT" --latency-ms "$LATENCY_MS" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

RAW=bench/out/teacher-http.jsonl
mkdir -p bench/out
: > "$RAW"
for c in $CONCURRENCY; do
  "$BIN" client --url "$URL" --concurrency "$c" --seconds "$SECONDS_PER_RUN" --latency-ms "$LATENCY_MS" | tee -a "$RAW"
  "$PYTHON" bench/teacher_http_openai.py "$URL" "$c" "$SECONDS_PER_RUN" "$LATENCY_MS" | tee -a "$RAW"
done

OPENAI_VERSION=$("$PYTHON" -c "import openai; print(openai.__version__)")
"$PYTHON" - "$RAW" "$LATENCY_MS" "$SECONDS_PER_RUN" "$OPENAI_VERSION" > bench/results/teacher-http.md <<'PY'
import json, os, platform, sys
raw, latency, seconds, version = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = [json.loads(line) for line in open(raw)]
by = {}
for r in rows:
    by.setdefault(r["concurrency"], {})[r["client"]] = r
cpus = os.cpu_count()
print("## (a) HTTP teacher throughput\n")
print(f"Requests per second against a local OpenAI-compatible server that answers every request "
      f"after {latency} ms, with a fixed number of requests kept in flight, counted for "
      f"{seconds} s after a 1 s warm-up. The bound is concurrency / latency. Client and server "
      f"share the machine ({cpus} CPUs, {platform.processor() or platform.machine()}); "
      f"Python {platform.python_version()}, openai {version} with its default connection limits.\n")
print("| concurrency | bound (req/s) | prompt2lora (req/s) | of bound | openai.AsyncOpenAI (req/s) | of bound | ratio |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for c in sorted(by):
    p, o = by[c].get("prompt2lora"), by[c].get("openai.AsyncOpenAI")
    ratio = f"{p['requests_per_second'] / o['requests_per_second']:.2f}x" if p and o and o["requests_per_second"] else "-"
    cell = lambda r: (f"{r['requests_per_second']:.1f}", f"{100 * r['fraction']:.1f}%") if r else ("-", "-")
    print(f"| {c} | {p['bound'] if p else o['bound']:.0f} | {cell(p)[0]} | {cell(p)[1]} | {cell(o)[0]} | {cell(o)[1]} | {ratio} |")
failed = sum(r["failed"] for r in rows)
print(f"\nFailed requests in all runs: {failed}. Reproduce with `bench/teacher_http.sh`; raw lines in `bench/out/teacher-http.jsonl`.")
PY
cat bench/results/teacher-http.md
