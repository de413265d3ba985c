#!/usr/bin/env python3
"""Makes the bundled preference set data/kjv_dpo.jsonl (+ data/kjv_dpo_val.jsonl) from
data/kjv.txt: for a verse cut after its first words, the true rest of the verse is preferred
over the rest of another verse.

Each row is `{"prompt": "And God said,", "chosen": " Let there be light: ...",
"rejected": " and the sons of ..."}` (TRL's standard preference format; TRL and rankforge append
the EOS token to both completions). Verses of 8-40 words are eligible; the prompt is the first
third of the words (at least 3); the rejected completion is the same cut of another eligible
verse drawn at random (never the same text). `--train + --val` distinct verses are drawn
(random.Random(--seed).sample), the first `--val` go to the validation file. Same input and
arguments -> the same bytes (Python >= 3.8, standard library only).

    python3 scripts/make_kjv_dpo.py              # writes data/kjv_dpo.jsonl, data/kjv_dpo_val.jsonl
    python3 scripts/make_kjv_dpo.py --train 64 --val 16 --out-dir /tmp/kjv
"""

import argparse
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADING = re.compile(r"^\S.* \d+$")  # "Genesis 1", "1 Kings 3", "Song of Solomon 2"


def verses(path):
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not HEADING.match(line) and 8 <= len(line.split()) <= 40:
            yield line


def cut(verse):
    words = verse.split()
    k = max(3, len(words) // 3)
    return " ".join(words[:k]), " " + " ".join(words[k:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", type=Path, default=ROOT / "data/kjv.txt")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "data")
    a = ap.parse_args()
    pool = sorted(set(verses(a.input)))
    rng = random.Random(a.seed)
    picked = rng.sample(pool, a.train + a.val)
    rows = []
    for v in picked:
        prompt, chosen = cut(v)
        while True:
            _, rejected = cut(rng.choice(pool))
            if rejected != chosen:
                break
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    a.out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in [("kjv_dpo_val.jsonl", rows[: a.val]), ("kjv_dpo.jsonl", rows[a.val :])]:
        with open(a.out_dir / name, "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{a.train} train + {a.val} val pairs from {len(pool)} eligible verses -> {a.out_dir}")


if __name__ == "__main__":
    main()
