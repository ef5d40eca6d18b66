"""llama.cpp side of the local-teacher benchmark: prompt processing and greedy generation
speed on the same GGUF file and thread count as `local_teacher_bench`.

Usage: python llama_cpp_bench.py MODEL.gguf THREADS [PROMPT_TOKENS] [GEN_TOKENS]
Needs `llama-cpp-python` (built from source by pip).
"""

import sys
import time

import llama_cpp


def main() -> None:
    path, threads = sys.argv[1], int(sys.argv[2])
    prompt_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    gen_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=2048,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        # The repacked weight buffers crashed decoding on the measured CPU.
        use_extra_bufts=False,
        verbose=False,
    )
    text = "The customer writes about an order, a delivery or an invoice. " * 40
    tokens = llm.tokenize(text.encode(), add_bos=False)[:prompt_tokens]
    llm.eval(tokens[:8])  # warm-up
    llm.reset()

    started = time.perf_counter()
    llm.eval(tokens)
    seconds = time.perf_counter() - started
    print(f"prompt_tok_s\t{len(tokens) / seconds:.1f}\t({len(tokens)} tokens in {seconds:.2f} s)")

    started = time.perf_counter()
    for _ in range(gen_tokens):
        logits = llm.scores[llm.n_tokens - 1]
        llm.eval([int(logits.argmax())])
    seconds = time.perf_counter() - started
    print(f"gen_tok_s_batch1\t{gen_tokens / seconds:.2f}\t({gen_tokens} tokens in {seconds:.2f} s)")


if __name__ == "__main__":
    main()
