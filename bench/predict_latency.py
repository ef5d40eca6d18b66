"""Single-message latency of `prompt2lora predict`: sends one message at a time on stdin and
waits for its JSONL answer on stdout, so each figure includes the pipe and JSON round trip
(a little more than the model call itself). Prints one JSON object with p50/p99 in ms."""

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("adapter")
    parser.add_argument("messages", type=Path)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    texts = [line.rstrip("\n") for line in args.messages.open() if line.strip()]
    child = subprocess.Popen(
        [args.binary, "-q", "predict", args.adapter, "--batch-wait-ms", "0", "--format", "lines"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )
    latencies = []
    for i, text in enumerate(texts[: args.warmup + args.count]):
        started = time.perf_counter()
        child.stdin.write(text + "\n")
        child.stdin.flush()
        answer = child.stdout.readline()
        elapsed = (time.perf_counter() - started) * 1000
        json.loads(answer)
        if i >= args.warmup:
            latencies.append(elapsed)
    child.stdin.close()
    child.wait()
    latencies.sort()
    print(json.dumps({
        "messages": len(latencies),
        "latency_ms_p50": statistics.median(latencies),
        "latency_ms_p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }))


if __name__ == "__main__":
    main()
