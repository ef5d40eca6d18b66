"""Reference side of the filter's embedding benchmark: the same model folder and the same
sentences, embedded with PyTorch sentence-transformers (mean pooling, unit length).

Measures sentences/s over --count sentences of the planted set in batches of --batch-size
(64, like the Rust embedder), after a warm-up batch, with --threads torch threads. With
--compare CACHE (the `embeddings-<model>.bin` file the Rust benchmark wrote) it also reports
the cosine similarity between the two implementations' vectors for the same sentences.

    python bench/filter_embed_torch.py --model DIR --samples target/filter-bench/planted/samples.jsonl \
        --count 2048 --threads 2 --prefix "query: " --compare target/filter-bench/planted/embeddings-e5-small.bin
"""

import argparse
import json
import struct
import time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer, models


def read_cache(path):
    rows = {}
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        (n,) = struct.unpack_from("<I", data, at)
        text = data[at + 4 : at + 4 + n].decode("utf-8")
        at += 4 + n
        (dim,) = struct.unpack_from("<I", data, at)
        rows[text] = np.frombuffer(data, dtype="<f4", count=dim, offset=at + 4)
        at += 4 + 4 * dim
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder in the Hugging Face layout")
    parser.add_argument("--samples", required=True)
    parser.add_argument("--count", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--prefix", default="", help='"query: " for e5 models')
    parser.add_argument("--compare")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with open(args.samples, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()][: args.count]
    word = models.Transformer(args.model, max_seq_length=args.max_length)
    pooling = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu")

    inputs = [args.prefix + t for t in texts]
    model.encode(inputs[: args.batch_size], batch_size=args.batch_size)
    started = time.perf_counter()
    vectors = model.encode(inputs, batch_size=args.batch_size, convert_to_numpy=True)
    seconds = time.perf_counter() - started
    result = {
        "implementation": "pytorch sentence-transformers",
        "torch": torch.__version__,
        "threads": args.threads,
        "sentences": len(texts),
        "seconds": round(seconds, 2),
        "sentences_per_s": round(len(texts) / seconds, 1),
    }
    if args.compare:
        cache = read_cache(args.compare)
        cosines = [float(np.dot(v, cache[t])) for t, v in zip(texts, vectors) if t in cache]
        result["compared"] = len(cosines)
        result["cosine_min"] = round(min(cosines), 6) if cosines else None
        result["cosine_mean"] = round(float(np.mean(cosines)), 6) if cosines else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
