#!/usr/bin/env python3
"""Prints the proof's tables (Markdown) from what bench/proof/run.sh left in bench/out/proof/SET.

usage: summary.py SET TRAIN_POOL.jsonl [...]

The human labels of the training pool are read for one diagnostic only: how often the teacher's
labels were right before and after the filter. They reach no stage of the pipeline.
"""

import json
import sys
from datetime import datetime
from pathlib import Path


def load(path):
    return json.loads(Path(path).read_text())


def jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def minutes(rows):
    times = [datetime.fromisoformat(r["provenance"]["created"][:26].rstrip("Z")) for r in rows]
    return (max(times) - min(times)).total_seconds() / 60


def scores(metrics):
    return metrics["macro_f1"], metrics["accuracy"]


def main():
    set_name, pools = sys.argv[1], sys.argv[2:]
    out = Path("bench/out/proof") / set_name
    truth = {}
    for pool in pools:
        for row in jsonl(pool):
            truth[" ".join(row["text"].split())] = row["label"]

    samples = jsonl(out / "samples.jsonl")
    clean = jsonl(out / "clean.jsonl")
    funnel = load(out / "filter_report.json")
    summary = load(out / "adapter/train_summary.json")
    full = load(out / "eval-full/metrics.json")

    right = lambda rows: sum(truth.get(r["text"]) == r["intent"] for r in rows) / len(rows)
    label_minutes = minutes(samples)
    print(f"- teacher labelling: {len(samples)} messages in {label_minutes:.1f} min "
          f"({len(samples) / label_minutes:.1f} messages/min)")
    print(f"- filter: kept {funnel['kept']} of {funnel['input']}; "
          + ", ".join(f"{s['stage']} -{s['removed']}" for s in funnel["funnel"] if s["removed"]))
    print(f"- teacher labels right (diagnostic, against the pool's hidden human labels): "
          f"{right(samples):.3f} of all labelled, {right(clean):.3f} of those the filter kept")
    print(f"- student: {summary['student']}, rank {summary['rank']['rank']} "
          f"({summary['rank']['method']}: {summary['rank']['reason']}), "
          f"{summary['train_examples']} training examples, best epoch {summary['best_epoch']}, "
          f"{summary['examples_per_second']:.1f} examples/s, "
          f"synthetic validation macro-F1 {summary['validation_macro_f1']:.3f}")
    print()
    print("| test messages | student macro-F1 | student accuracy | teacher macro-F1 | teacher accuracy "
          "| student - teacher (macro-F1) |")
    print("|---|---:|---:|---:|---:|---:|")
    f1, acc = scores(full["student"])
    print(f"| all {full['test_set']['messages']} | {f1:.3f} | {acc:.3f} | | | |")
    # eval-teacher: the main student; eval-teacher-NAME: the student of ablation NAME, scored on
    # the same messages against the same (cached) teacher labels.
    for path in sorted(out.glob("eval-teacher*/metrics.json")):
        paired = load(path)
        which = path.parent.name.removeprefix("eval-teacher").lstrip("-") or "main"
        f1, acc = scores(paired["student"])
        tf1, tacc = scores(paired["teacher"]["metrics"])
        print(f"| {paired['test_set']['messages']} (stratified sample, both scored; student: "
              f"{which}) | {f1:.3f} | {acc:.3f} | {tf1:.3f} | {tacc:.3f} | {f1 - tf1:+.3f} |")
    print()
    print("| ablation (student on all test messages) | training samples | rank | macro-F1 | accuracy |")
    print("|---|---:|---:|---:|---:|")
    rows = [("full filter, rank auto (the run above)", out / "adapter", out / "eval-full")]
    for name in ["no-filter", "no-confidence-cut", "rank-4", "rank-8", "rank-32", "rank-sweep"]:
        rows.append((name, out / "ablation" / name, out / "ablation" / f"{name}-eval"))
    for name, adapter, evaluation in rows:
        if not (evaluation / "metrics.json").exists():
            print(f"| {name} | | | not run | |")
            continue
        s = load(adapter / "train_summary.json")
        f1, acc = scores(load(evaluation / "metrics.json")["student"])
        n = s["train_examples"] + s["validation_examples"]
        print(f"| {name} | {n} | {s['rank']['rank']} ({s['rank']['method']}) | {f1:.3f} | {acc:.3f} |")


if __name__ == "__main__":
    main()
