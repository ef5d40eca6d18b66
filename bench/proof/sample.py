#!/usr/bin/env python3
"""Draws the messages of the proof on real data, reproducibly.

usage:
  sample.py unlabelled POOL.jsonl N SEED OUT.txt
      N messages drawn at random from POOL; only their text is written, one per line, so the
      human labels never reach the pipeline.
  sample.py labelled TEST.jsonl N SEED OUT.jsonl
      N labelled messages drawn at random from TEST, stratified by label (as even as the split
      allows), for the slower teacher-side scoring.
"""

import json
import random
import sys
from collections import defaultdict


def read(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def unlabelled(pool, n, seed, out):
    rows = read(pool)
    seen, texts = set(), []
    for row in rows:
        # One line per message: a message with a line break would split in two.
        text = " ".join(row["text"].split())
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
    random.Random(seed).shuffle(texts)
    with open(out, "w", encoding="utf-8") as f:
        for text in texts[:n]:
            f.write(text + "\n")


def labelled(test, n, seed, out):
    rows = read(test)
    by_label = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    rng = random.Random(seed)
    for label in sorted(by_label):
        rng.shuffle(by_label[label])
    # Round robin over the labels, so small labels get their share first.
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(v) for v in by_label.values()):
        for label in sorted(by_label):
            if depth < len(by_label[label]) and len(picked) < n:
                picked.append(by_label[label][depth])
        depth += 1
    rng.shuffle(picked)
    with open(out, "w", encoding="utf-8") as f:
        for row in picked:
            f.write(json.dumps({"text": row["text"], "label": row["label"]}, ensure_ascii=False) + "\n")


def main():
    if len(sys.argv) != 6 or sys.argv[1] not in ("unlabelled", "labelled"):
        sys.exit(__doc__)
    mode, path, n, seed, out = sys.argv[1:]
    (unlabelled if mode == "unlabelled" else labelled)(path, int(n), int(seed), out)


if __name__ == "__main__":
    main()
