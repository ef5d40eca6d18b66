#!/usr/bin/env python3
"""Assembles BENCHMARKS.md from the per-stage result files in bench/results/, in pipeline
order. Each file keeps its own commands and measurement conditions."""
from pathlib import Path

root = Path(__file__).resolve().parent.parent
order = ["teacher-http", "local-teacher", "generate", "filter", "train", "eval-serve", "run"]
parts = [
    "# Benchmarks",
    "",
    "Every figure below was measured on a 2-core shared machine, next to the peer tool in the",
    "same run, with the command given in its section. Absolute numbers on such a machine are",
    "noisy; the ratios between the two columns of one run are what each section compares.",
    "Goals that are not met are said so. Sections are assembled from `bench/results/*.md` by",
    "`scripts/benchmarks-doc.py`.",
    "",
]
files = sorted((root / "bench/results").glob("*.md"), key=lambda p: (
    order.index(p.stem) if p.stem in order else len(order), p.stem))
for path in files:
    text = path.read_text().strip()
    demoted = "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
    parts += [demoted, ""]
(root / "BENCHMARKS.md").write_text("\n".join(parts))
