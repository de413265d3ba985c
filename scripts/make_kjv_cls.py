#!/usr/bin/env python3
"""Makes the bundled classification set data/kjv_cls.jsonl (+ data/kjv_cls_val.jsonl) from
data/kjv.txt: which part of the Bible a verse comes from, six labels.

    law       Genesis – Deuteronomy (the Pentateuch, 5 books)
    history   Joshua – Esther (12 books)
    wisdom    Job, Psalms, Proverbs, Ecclesiastes, Song of Solomon (wisdom and poetry)
    prophets  Isaiah – Malachi (major and minor prophets, Lamentations and Daniel included)
    gospels   Matthew, Mark, Luke, John and Acts
    letters   Romans – Revelation (the epistles and Revelation)

Each row is one verse, `{"text": "...", "label": "law"}`. Verses of 40–300 characters are
eligible (very short verses such as "Jesus wept." say little about where they come from; the
cap keeps the file small). For each label, in the order above, `--train + --val` distinct verses
are drawn at random (random.Random(--seed).sample), the first `--val` go to the validation file
and the rest to the training file; each file is then shuffled. Same input and arguments → the
same bytes (Python ≥ 3.8, standard library only).

    python3 scripts/make_kjv_cls.py              # writes data/kjv_cls.jsonl, data/kjv_cls_val.jsonl
    python3 scripts/make_kjv_cls.py --train 100 --val 20 --out-dir /tmp/kjv
"""

import argparse
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The 66 books in kjv.txt's order, grouped into the six labels (the order of the label list is
# the order of the sampling, so it is part of the output's definition).
GROUPS = [
    ("law", ["Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy"]),
    ("history", ["Joshua", "Judges", "Ruth", "1 Samuel", "2 Samuel", "1 Kings", "2 Kings",
                 "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther"]),
    ("wisdom", ["Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon"]),
    ("prophets", ["Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel",
                  "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah",
                  "Haggai", "Zechariah", "Malachi"]),
    ("gospels", ["Matthew", "Mark", "Luke", "John", "Acts"]),
    ("letters", ["Romans", "1 Corinthians", "2 Corinthians", "Galatians", "Ephesians",
                 "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians", "1 Timothy",
                 "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter", "2 Peter",
                 "1 John", "2 John", "3 John", "Jude", "Revelation"]),
]
BOOK_LABEL = {book: label for label, books in GROUPS for book in books}
HEADING = re.compile(r"^(?P<book>[1-3]? ?[A-Z][A-Za-z ]*?) (?P<chapter>[0-9]+)$")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, default=ROOT / "data/kjv.txt")
    p.add_argument("--out-dir", type=Path, default=ROOT / "data")
    p.add_argument("--train", type=int, default=350, help="training verses per label")
    p.add_argument("--val", type=int, default=50, help="validation verses per label")
    p.add_argument("--min-chars", type=int, default=40)
    p.add_argument("--max-chars", type=int, default=300)
    p.add_argument("--seed", type=int, default=1611)
    return p.parse_args()


def verses_by_label(path, min_chars, max_chars):
    """{label: [verse text, ...]} in the corpus' order; every heading must name a known book."""
    out = {label: [] for label, _ in GROUPS}
    label = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            m = HEADING.match(line)
            if m:
                book = m.group("book")
                if book not in BOOK_LABEL:
                    sys.exit(f"error: {path}:{n}: heading {line!r} names no known book")
                label = BOOK_LABEL[book]
                continue
            if label is None:
                sys.exit(f"error: {path}:{n}: a verse before the first `Book N` heading")
            if min_chars <= len(line) <= max_chars:
                out[label].append(line)
    return out


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for text, label in rows:
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")


def main():
    args = parse_args()
    verses = verses_by_label(args.input, args.min_chars, args.max_chars)
    rng = random.Random(args.seed)
    train, val = [], []
    for label, _ in GROUPS:
        pool = verses[label]
        need = args.train + args.val
        if len(pool) < need:
            sys.exit(f"error: label {label!r} has {len(pool)} eligible verses, {need} requested")
        picked = rng.sample(pool, need)
        val += [(t, label) for t in picked[:args.val]]
        train += [(t, label) for t in picked[args.val:]]
    rng.shuffle(train)
    rng.shuffle(val)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "kjv_cls.jsonl", train)
    write_jsonl(args.out_dir / "kjv_cls_val.jsonl", val)
    sizes = {label: len(v) for label, v in verses.items()}
    print(f"eligible verses per label: {sizes}", file=sys.stderr)
    print(f"wrote {len(train)} training rows to {args.out_dir / 'kjv_cls.jsonl'} and "
          f"{len(val)} validation rows to {args.out_dir / 'kjv_cls_val.jsonl'}", file=sys.stderr)


if __name__ == "__main__":
    main()
