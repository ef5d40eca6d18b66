#!/usr/bin/env python3
"""Teacher labels with and without contextual calibration, on the same scores.

usage: calibration.py SCORES.jsonl [SCORES.jsonl ...]
  SCORES.jsonl is what the `teacher_calibration` example wrote: a first line with the intents
  and the content-free prior, then one line per message with its human label and the teacher's
  log-probability of each intent.
Prints accuracy, macro-F1 (over the labels present) and the most predicted intent, raw and
calibrated.
"""

import json
import math
import sys
from collections import Counter


def macro_f1(gold, pred):
    labels = sorted(set(gold))
    scores = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores)


def main(path):
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    head, rows = lines[0], lines[1:]
    intents, prior = head["intents"], head["prior"]
    gold = [r["label"] for r in rows]
    raw = [intents[max(range(len(intents)), key=lambda i: r["logprobs"][i])] for r in rows]
    log_prior = [math.log(max(p, 1e-12)) for p in prior]
    cal = [
        intents[max(range(len(intents)), key=lambda i: r["logprobs"][i] - log_prior[i])]
        for r in rows
    ]
    top_prior = sorted(zip(prior, intents), reverse=True)[:3]
    print(f"{path}: {len(rows)} messages, {len(intents)} intents")
    print("  prior, top 3: " + ", ".join(f"{n} {p:.3f}" for p, n in top_prior))
    for name, pred in (("raw", raw), ("calibrated", cal)):
        acc = sum(g == p for g, p in zip(gold, pred)) / len(gold)
        common, count = Counter(pred).most_common(1)[0]
        print(
            f"  {name:<10} accuracy {acc:.3f}  macro-F1 {macro_f1(gold, pred):.3f}"
            f"  most predicted {common} ({count / len(pred):.0%})"
        )


if __name__ == "__main__":
    for p in sys.argv[1:]:
        main(p)
