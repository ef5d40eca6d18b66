"""Benchmark of Python's openai.AsyncOpenAI request throughput against the same local server
as crates/prompt2lora-teacher/examples/teacher_http_bench.rs, with the same protocol: keep
CONCURRENCY requests in flight, warm up for one second, count completions for SECONDS, and print
one JSON line. Run by bench/teacher_http.sh.

usage: python teacher_http_openai.py URL CONCURRENCY SECONDS LATENCY_MS
"""

import asyncio
import json
import sys
import time

from openai import AsyncOpenAI


async def main(url: str, concurrency: int, seconds: float, latency_ms: int) -> None:
    client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
    messages = [
        {"role": "system", "content": "You classify customer messages by the intent they express."},
        {"role": "user", "content": "The message: I want my money back for the broken kettle. Answer with JSON."},
    ]
    state = {"counting": False, "stop": False, "done": 0, "failed": 0}

    async def worker() -> None:
        while not state["stop"]:
            try:
                await client.chat.completions.create(
                    model="bench", messages=messages, temperature=0.0, top_p=1.0, max_tokens=64
                )
                ok = True
            except Exception:  # noqa: BLE001 - any failure counts as failed
                ok = False
            if state["counting"]:
                state["done" if ok else "failed"] += 1

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(1.0)
    state["counting"] = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    state["counting"] = False
    elapsed = time.perf_counter() - started
    state["stop"] = True
    await asyncio.gather(*tasks)
    rps = state["done"] / elapsed
    bound = concurrency / (latency_ms / 1000.0)
    print(json.dumps({"client": "openai.AsyncOpenAI", "concurrency": concurrency,
                      "requests_per_second": rps, "bound": bound, "fraction": rps / bound,
                      "failed": state["failed"]}))


if __name__ == "__main__":
    url, concurrency, seconds, latency_ms = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(url, concurrency, seconds, latency_ms))
