#!/usr/bin/env python3
"""Writes docs/task-file.md from the documented settings structs in
crates/prompt2lora-core/src/task.rs, so the page lists every key with its default.
With --check, fails instead when the page is out of date."""
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
source = (root / "crates/prompt2lora-core/src/task.rs").read_text()

out = [
    "# The task file",
    "",
    "A task file is TOML. `name`, `language` and at least two `[[intents]]` are required; every",
    "other key has the default shown. Unknown keys are errors, and every error names the file, the",
    "line and the key. Check a file with `prompt2lora task check FILE`. This page is generated",
    "from the code by `scripts/task-file-doc.py`.",
    "",
    "```toml",
    'name = "ecommerce-en"      # required',
    'language = "en"            # required: zh, en, ... or mixed',
    'catch_all = "other"        # optional: the intent that takes everything else',
    "",
    "[[intents]]",
    'name = "return"',
    'description = "The customer wants to send back an item and get their money back."',
    "examples = [\"These jeans don't fit, I'd like a refund\"]   # optional seed messages",
    "```",
    "",
]
for section, struct in [("teacher", "TeacherSettings"), ("filter", "FilterSettings"),
                        ("train", "TrainSettings"), ("eval", "EvalSettings")]:
    body = re.search(r"pub struct %s \{(.*?)\n\}" % struct, source, re.S).group(1)
    out += [f"## [{section}]", "", "| key | meaning |", "|---|---|"]
    doc = []
    for line in body.split("\n"):
        line = line.strip()
        if line.startswith("///"):
            doc.append(line[3:].strip())
        elif line.startswith("pub "):
            key = line[4:].split(":")[0]
            out.append(f"| `{key}` | {' '.join(doc).replace('|', '/')} |")
            doc = []
    out.append("")
text = "\n".join(out)
page = root / "docs/task-file.md"
if "--check" in sys.argv:
    if page.read_text() != text:
        sys.exit("docs/task-file.md is out of date: run scripts/task-file-doc.py")
else:
    page.write_text(text)
