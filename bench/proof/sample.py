"""Draws messages at random from a labelled JSONL file, without looking at the labels, for the
label-mode proof: `unlabelled` writes the texts alone (one per line), `labelled` keeps the
records (for a test subset).

usage: python sample.py unlabelled|labelled IN.jsonl N SEED OUT
"""
import json, random, sys

mode, path, n, seed, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rows = [json.loads(line) for line in open(path, encoding="utf-8")]
random.Random(seed).shuffle(rows)
with open(out, "w", encoding="utf-8") as f:
    for row in rows[:n]:
        if mode == "unlabelled":
            f.write(" ".join(row["text"].split()) + "\n")
        else:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
