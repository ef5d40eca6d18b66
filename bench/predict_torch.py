"""Reference side of the predict benchmark: the same trained adapter, merged into the base
weights (the `merged/` folder that `prompt2lora train --merge` writes), run with PyTorch and
Hugging Face transformers.

Measures, like bench/predict.sh does for prompt2lora:
- throughput: messages/s over all messages in batches of --batch-size (tokenise, forward,
  softmax), after a warm-up batch; with --sort-window N, every N messages are first sorted by
  token count and then cut into batches (what `prompt2lora predict --sort-window` does), so
  both engines can be compared with and without that step;
- single-message latency: p50/p99 over --latency-messages messages sent one at a time.

Prints one JSON object. Also checks that the predictions agree with prompt2lora's
(--compare FILE, the JSONL that `prompt2lora predict` wrote for the same messages).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import BertModel


def load(merged: Path):
    meta = json.loads((merged / "labels.json").read_text())
    model = BertModel.from_pretrained(merged, add_pooling_layer=False).eval()
    tensors = load_file(merged / "model.safetensors")
    head = torch.nn.Linear(tensors["classifier.weight"].shape[1], tensors["classifier.weight"].shape[0])
    head.weight.data = tensors["classifier.weight"].float()
    head.bias.data = tensors["classifier.bias"].float()
    tokenizer = Tokenizer.from_file(str(merged / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(meta.get("max_length", 64))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return meta, model, head.eval(), tokenizer


@torch.inference_mode()
def classify(model, head, tokenizer, texts, pooling):
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return torch.softmax(head(pooled), dim=-1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("merged", type=Path)
    parser.add_argument("messages", type=Path, help="one message per line")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sort-window", type=int, default=0, help="0: batches in input order")
    parser.add_argument("--latency-messages", type=int, default=300, help="0: skip")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare", type=Path, help="prompt2lora predict output for the same messages")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    meta, model, head, tokenizer = load(args.merged)
    pooling = str(meta.get("pooling", "mean")).lower()
    texts = [line.rstrip("\n") for line in args.messages.open() if line.strip()]
    unpadded = Tokenizer.from_file(str(args.merged / "tokenizer.json"))
    unpadded.no_padding()
    unpadded.enable_truncation(meta.get("max_length", 64))

    # Throughput, after one warm-up batch.
    classify(model, head, tokenizer, texts[: args.batch_size], pooling)
    predicted = [None] * len(texts)
    window = args.sort_window if args.sort_window > 0 else args.batch_size
    started = time.perf_counter()
    for start in range(0, len(texts), window):
        order = list(range(start, min(start + window, len(texts))))
        if args.sort_window > 0:
            # Token counts, as the sort key; this tokenisation is part of the measured time.
            lengths = [len(e.ids) for e in unpadded.encode_batch([texts[i] for i in order])]
            order = [i for _, i in sorted(zip(lengths, order))]
        for b in range(0, len(order), args.batch_size):
            batch = order[b : b + args.batch_size]
            probs = classify(model, head, tokenizer, [texts[i] for i in batch], pooling)
            for i, p in zip(batch, probs.argmax(-1).tolist()):
                predicted[i] = p
    seconds = time.perf_counter() - started

    # Single-message latency.
    latencies = []
    for text in texts[: args.latency_messages]:
        t = time.perf_counter()
        classify(model, head, tokenizer, [text], pooling)
        latencies.append((time.perf_counter() - t) * 1000)
    latencies.sort()

    result = {
        "engine": f"pytorch {torch.__version__}",
        "threads": args.threads,
        "messages": len(texts),
        "batch_size": args.batch_size,
        "sort_window": args.sort_window,
        "messages_per_second": len(texts) / seconds,
    }
    if latencies:
        result["latency_ms_p50"] = statistics.median(latencies)
        result["latency_ms_p99"] = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    if args.compare:
        labels = meta["labels"]
        theirs = [json.loads(line)["intent"] for line in args.compare.open() if line.strip()]
        same = sum(labels[p] == t for p, t in zip(predicted, theirs))
        result["agreement_with_prompt2lora"] = same / max(1, len(theirs))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
