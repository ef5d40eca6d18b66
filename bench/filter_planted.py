"""Builds a samples file with planted duplicates for the filter benchmark.

The originals are the training splits of two public intent data sets (SNIPS, English; and
SMP2017-ECDT, Chinese; its validation split too), made distinct: no two alike after
normalisation, and (with --distinct J, default 0.5) no two whose sets of character bigrams have
a Jaccard similarity of J or more (bigrams, so that short Chinese texts one character apart,
"猪肉怎么做" / "狗肉怎么做", count as alike). SNIPS is written from templates ("rate this album a 4" / "rate
this album a five"); without that step such natural near duplicates, which the truth does not
know, would count against the filter's precision. Copies of some originals are planted next to
them, each made by rules, in three kinds:

- exact:      the same text in other case, width, spacing or punctuation;
- one_char:   one character substituted, inserted or deleted;
- paraphrase: the same request in other words (prefixes and suffixes of politeness, synonyms,
              contractions; for Chinese: 帮我/请/我想, 一下/吧, synonyms), at least one rule
              applied.

Writes into --out: samples.jsonl (shuffled; ids `o…` for originals, `v…` for copies),
truth.jsonl (one line per copy: its id, the original's id, the kind) and task.toml (every label
of both data sets as an intent). No test split is read: thresholds are chosen on this set.

    python3 bench/filter_planted.py --data DATA --out target/filter-bench/planted
    python3 bench/filter_planted.py --data DATA --out target/filter-bench/s100k --total 100000
"""

import argparse
import json
import random
import re
import unicodedata
from pathlib import Path

EN_PREFIXES = ["please ", "can you ", "could you ", "i want to ", "i'd like to ", "would you "]
EN_SUFFIXES = [" please", " for me", " now", " thanks"]
EN_SYNONYMS = {
    "find": "look for", "show": "display", "play": "put on", "book": "reserve",
    "add": "put", "rate": "give", "search": "look", "movie": "film", "movies": "films",
    "song": "track", "songs": "tracks", "tell me": "let me know", "what is": "what's",
    "i want": "i'd like", "i need": "i want", "restaurant": "eatery", "look up": "find",
    "give": "rate", "start": "begin", "forecast": "weather forecast", "nearby": "close by",
    "schedule": "timetable", "picture": "image", "television": "tv",
}
ZH_PREFIXES = ["帮我", "请", "我想", "麻烦", "给我"]
ZH_SUFFIXES = ["吧", "一下", "呢", "好吗"]
ZH_SYNONYMS = {
    "打开": "启动", "播放": "放", "查询": "查一下", "搜索": "找", "告诉我": "跟我说",
    "怎么样": "如何", "今天": "今日", "明天": "明日", "我要": "我想", "我想": "我要",
    "给我": "帮我", "帮我": "给我", "查看": "看看", "现在": "目前", "什么": "啥",
}


def normalize(text):
    """Close to prompt2lora's normalisation: NFKC, lower case, no punctuation or symbols."""
    out = []
    for c in unicodedata.normalize("NFKC", text).lower():
        if c.isspace():
            out.append(" ")
        elif unicodedata.category(c)[0] not in "PS":
            out.append(c)
    return " ".join("".join(out).split())


def is_chinese(text):
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def bigrams(text):
    padded = f" {normalize(text)} "
    return {padded[i : i + 2] for i in range(len(padded) - 1)}


def distinct(originals, threshold):
    """Drops each original whose bigram Jaccard with an earlier kept one is `threshold` or more
    (exact, by sparse products in blocks: numpy and scipy, which sentence-transformers' venv has)."""
    import numpy as np
    from scipy import sparse

    vocab, rows, cols = {}, [], []
    for i, row in enumerate(originals):
        for g in bigrams(row["text"]):
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
    n = len(originals)
    x = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, len(vocab)))
    sizes = np.asarray(x.sum(axis=1)).ravel()
    kept = np.zeros(n, dtype=bool)
    block = 1024
    for start in range(0, n, block):
        end = min(n, start + block)
        inter = (x[start:end] @ x[:end].T).toarray()
        union = sizes[start:end, None] + sizes[None, :end] - inter
        similar = inter >= threshold * np.maximum(union, 1)
        for i in range(start, end):
            earlier = similar[i - start, :i]
            kept[i] = not earlier[kept[:i]].any()
    return [row for row, keep in zip(originals, kept) if keep]


def read_split(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def exact_copy(text, rng):
    ops = [
        lambda t: t.upper() if not is_chinese(t) else t + "！",
        lambda t: t.lower() + rng.choice(["!", "?", "。", "！", "..."]),
        lambda t: "  " + t.replace(" ", "   ") + " ",
        lambda t: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in t),
        lambda t: t.capitalize() + rng.choice([".", "!!", "？"]),
    ]
    for _ in range(10):
        copy = rng.choice(ops)(text)
        if copy != text and normalize(copy) == normalize(text):
            return copy
    return None


def one_char_copy(text, alphabet, rng):
    positions = [i for i, c in enumerate(text) if c.isalnum()]
    if len(positions) < 2:
        return None
    for _ in range(10):
        i = rng.choice(positions)
        op = rng.choice(["substitute", "insert", "delete"])
        new = rng.choice(alphabet[is_chinese(text[i])])
        if op == "substitute":
            copy = text[:i] + new + text[i + 1 :]
        elif op == "insert":
            copy = text[:i] + new + text[i:]
        else:
            copy = text[:i] + text[i + 1 :]
        if normalize(copy) != normalize(text) and normalize(copy):
            return copy
    return None


def paraphrase(text, rng):
    zh = is_chinese(text)
    synonyms = ZH_SYNONYMS if zh else EN_SYNONYMS
    rules = []
    lower = text if zh else text.lower()
    found = [k for k in synonyms if (k in lower if zh else re.search(rf"\b{re.escape(k)}\b", lower))]
    if found:
        rules.append("synonym")
    rules += ["prefix", "suffix"]
    rng.shuffle(rules)
    copy = lower.rstrip(" .?!。？！")
    for rule in rules[: rng.choice([1, 2, 2])]:
        if rule == "synonym":
            k = rng.choice(found)
            copy = copy.replace(k, synonyms[k], 1) if zh else re.sub(rf"\b{re.escape(k)}\b", synonyms[k], copy, count=1)
        elif rule == "prefix":
            copy = rng.choice(ZH_PREFIXES if zh else EN_PREFIXES) + copy
        else:
            copy = copy + rng.choice(ZH_SUFFIXES if zh else EN_SUFFIXES)
    if normalize(copy) == normalize(text):
        return None
    return copy


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with snips/ and smp2017_ecdt_task1/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-kind", type=int, default=1000, help="copies planted of each kind")
    parser.add_argument("--total", type=int, help="plant copies until the file has this many samples")
    parser.add_argument("--originals", type=int, help="use only this many originals (drawn at random)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--distinct", type=float, default=0.5,
                        help="drop originals this similar (bigram Jaccard) to another; 1 keeps all")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    rows = read_split(args.data / "snips/train.jsonl")
    rows += read_split(args.data / "smp2017_ecdt_task1/train.jsonl")
    rows += read_split(args.data / "smp2017_ecdt_task1/validation.jsonl")
    seen, originals = set(), []
    for row in rows:
        key = normalize(row["text"])
        if key and key not in seen:
            seen.add(key)
            originals.append(row)
    rng.shuffle(originals)
    if args.distinct < 1:
        originals = distinct(originals, args.distinct)
    if args.originals:
        originals = originals[: args.originals]
    alphabet = {
        True: sorted({c for r in originals for c in r["text"] if "\u4e00" <= c <= "\u9fff"}),
        False: list("abcdefghijklmnopqrstuvwxyz"),
    }

    samples = [{"id": f"o{i}", "text": r["text"], "intent": r["label"]} for i, r in enumerate(originals)]
    makers = {
        "exact": exact_copy,
        "one_char": lambda t, rng: one_char_copy(t, alphabet, rng),
        "paraphrase": paraphrase,
    }
    truth = []
    planted_texts = {normalize(r["text"]) for r in originals}
    kinds = list(makers)
    target = args.total - len(samples) if args.total else args.per_kind * len(kinds)
    attempts = 0
    while len(truth) < target and attempts < 20 * target:
        attempts += 1
        kind = kinds[len(truth) % len(kinds)]
        i = rng.randrange(len(originals))
        copy = makers[kind](originals[i]["text"], rng)
        # Copies that collide with another sample would make the truth ambiguous; exact copies
        # collide on purpose with their own original only.
        if copy is None or (kind != "exact" and normalize(copy) in planted_texts):
            continue
        planted_texts.add(normalize(copy))
        vid = f"v{len(truth)}"
        samples.append({"id": vid, "text": copy, "intent": originals[i]["label"]})
        truth.append({"id": vid, "original": f"o{i}", "kind": kind})
    rng.shuffle(samples)

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "samples.jsonl", "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    with open(args.out / "truth.jsonl", "w", encoding="utf-8") as f:
        for t in truth:
            f.write(json.dumps(t) + "\n")
    labels = sorted({r["label"] for r in originals})
    with open(args.out / "task.toml", "w", encoding="utf-8") as f:
        f.write('name = "planted"\nlanguage = "mixed"\n\n')
        for label in labels:
            f.write(f'[[intents]]\nname = "{label}"\ndescription = "Messages labelled {label} in the source data set."\n\n')
        f.write("[filter]\nkeep_fraction = 1.0\nmin_per_intent = 0\n")
    counts = {k: sum(t["kind"] == k for t in truth) for k in kinds}
    print(json.dumps({"originals": len(originals), "copies": counts, "samples": len(samples)}))


if __name__ == "__main__":
    main()
