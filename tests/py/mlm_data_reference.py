"""Reference side of the masked-LM data tests (tests/mlm_data.rs).

usage:
  mlm_data_reference.py make OUT_DIR
      A tiny WordPiece tokenizer with [MASK] (and a copy without a mask token), text and row
      files, and what transformers 5 makes of them; prints one JSON object (the references).

Written under OUT_DIR:
  tok/           BertTokenizer (save_pretrained), special tokens [PAD] [UNK] [CLS] [SEP] [MASK]
                 and one additional special token [EXTRA]
  tok_nomask/    the same vocabulary as a PreTrainedTokenizerFast without a mask token
  lines.txt      plain text: blank and whitespace-only lines, a CRLF line, long lines
  rows.jsonl, rows.csv, rows.parquet   the non-blank lines as {"text": ...} rows
  dict/          a save_to_disk DatasetDict: train = rows, validation = 5 other texts
  stats.txt      12000 lines (about 130 k tokens) for the masking statistics
References (stdout):
  lines          tokenizer(line, truncation=True, max_length=12)["input_ids"] for every line that
                 run_mlm.py --line_by_line keeps (len > 0 and not isspace())
  lines_full     the same without truncation
  packed         run_mlm.py's tokenize (return_special_tokens_mask=True) + group_texts with
                 max_seq_length 16, through datasets.map(batched=True)
  packed_special the grouped special_tokens_mask (the tokens the post-processor added)
  packed_special_by_id  get_special_tokens_mask(block, already_has_special_tokens=True), what
                 the collator computes without a special_tokens_mask column (by id: also the
                 special tokens written in the text)
  dict_val       tokenizer(text)["input_ids"] of the DatasetDict's validation texts
  special_ids    sorted tokenizer.all_special_ids; mask_id; vocab_size = len(tokenizer)
  collator       DataCollatorForLanguageModeling(mlm_probability=0.15, seed=0) on stats.txt:
                 fractions chosen (of the non-special tokens), and of the chosen: [MASK], another
                 token, unchanged; and whether a special token was ever chosen
"""
import json
import os
import random
import sys
from itertools import chain

import torch
from datasets import Dataset, DatasetDict, disable_progress_bars
from transformers import BertTokenizer, DataCollatorForLanguageModeling, PreTrainedTokenizerFast

torch.set_num_threads(1)
disable_progress_bars()

WORDS = ("the movie was good bad great terrible fine plot acting i it and not a very boring fun story "
         "loved hated film actor ending music").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EXTRA]", ".", ",", "!"] + WORDS + list("abcdefghijklmnopqrstuvwxyz") + \
        ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]


def sentence(rng, n_min=2, n_max=9):
    words = [rng.choice(WORDS + ["zq", "qux"]) for _ in range(rng.randint(n_min, n_max))]
    return " ".join(words).capitalize() + rng.choice([".", "!", ""])


def write_lines(path, lines, end="\n"):
    with open(path, "w", newline="") as f:
        f.write(end.join(lines) + end)


def make(out):
    os.makedirs(out, exist_ok=True)
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True, additional_special_tokens=["[EXTRA]"])
    tok.save_pretrained(os.path.join(out, "tok"))
    nomask = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                     cls_token="[CLS]", sep_token="[SEP]")
    assert nomask.mask_token is None
    nomask.save_pretrained(os.path.join(out, "tok_nomask"))

    rng = random.Random(0)
    lines = [sentence(rng) for _ in range(14)]
    lines[3] = " ".join(sentence(rng, 8, 9) for _ in range(3))  # longer than max_length
    lines[7] = "A [MASK] and [EXTRA] in the text"  # special tokens written in the text
    with_blanks = lines[:2] + ["", "   "] + lines[2:9] + ["\t"] + lines[9:]
    with open(os.path.join(out, "lines.txt"), "w", newline="") as f:
        for i, line in enumerate(with_blanks):
            f.write(line + ("\r\n" if i == 5 else "\n"))
    kept = [l for l in with_blanks if len(l) > 0 and not l.isspace()]
    assert kept == lines
    rows = [{"text": l} for l in lines]
    with open(os.path.join(out, "rows.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    Dataset.from_list(rows).to_csv(os.path.join(out, "rows.csv"), index=False)
    Dataset.from_list(rows).to_parquet(os.path.join(out, "rows.parquet"))
    val = [sentence(rng) for _ in range(5)]
    DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list([{"text": t} for t in val])}).save_to_disk(
        os.path.join(out, "dict"))

    # run_mlm.py without --line_by_line: tokenize every text whole, then group_texts.
    max_seq_length = 16

    def tokenize_function(examples):
        return tok(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // max_seq_length) * max_seq_length
        return {k: [t[i:i + max_seq_length] for i in range(0, total_length, max_seq_length)] for k, t in concatenated.items()}

    tokenized = Dataset.from_dict({"text": lines}).map(tokenize_function, batched=True, remove_columns=["text"])
    grouped = tokenized.map(group_texts, batched=True)

    stats_lines = [sentence(rng, 4, 14) for _ in range(12000)]
    write_lines(os.path.join(out, "stats.txt"), stats_lines)
    refs = {
        "lines": [tok(l, truncation=True, max_length=12)["input_ids"] for l in lines],
        "lines_full": [tok(l)["input_ids"] for l in lines],
        "packed": list(grouped["input_ids"]),
        "packed_special": list(grouped["special_tokens_mask"]),
        "packed_special_by_id": [tok.get_special_tokens_mask(b, already_has_special_tokens=True) for b in grouped["input_ids"]],
        "dict_val": [tok(t)["input_ids"] for t in val],
        "special_ids": sorted(tok.all_special_ids),
        "mask_id": tok.mask_token_id,
        "pad_id": tok.pad_token_id,
        "vocab_size": len(tok),
        "collator": collator_stats(tok, stats_lines),
    }
    print(json.dumps(refs))


def collator_stats(tok, lines):
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, seed=0)
    special = torch.tensor(sorted(tok.all_special_ids))
    n_plain = chosen = masked = random_tok = same = special_chosen = 0
    for start in range(0, len(lines), 256):
        batch = collator([tok(l) for l in lines[start:start + 256]])
        enc = tok(lines[start:start + 256], padding=True, return_tensors="pt")["input_ids"]
        is_special = torch.isin(enc, special)
        picked = batch["labels"] != -100
        n_plain += int((~is_special).sum())
        chosen += int(picked.sum())
        special_chosen += int((picked & is_special).sum())
        masked += int((picked & (batch["input_ids"] == tok.mask_token_id)).sum())
        same += int((picked & (batch["input_ids"] == enc)).sum())
        random_tok += int((picked & (batch["input_ids"] != enc) & (batch["input_ids"] != tok.mask_token_id)).sum())
    return {"tokens": n_plain, "chosen": chosen / n_plain, "mask": masked / chosen, "random": random_tok / chosen,
            "kept": same / chosen, "special_chosen": special_chosen}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "make":
        sys.exit(__doc__)
    make(sys.argv[2])
