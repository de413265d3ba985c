"""Reference side of the tokenizer test (tests/tokenizer.rs): loads a tokenizer directory written
by `rankforge tokenizer train` with Python `tokenizers` and with transformers' AutoTokenizer, and
prints both encodings of the text in TEXT_FILE plus their decodings, as JSON.

usage: tokenizer_reference.py TOKENIZER_DIR TEXT_FILE
"""
import json
import os
import sys

from tokenizers import Tokenizer
from transformers import AutoTokenizer


def main() -> None:
    tok_dir, text_file = sys.argv[1:3]
    text = open(text_file, encoding="utf-8", newline="").read()
    raw = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(tok_dir)
    raw_ids = raw.encode(text, add_special_tokens=False).ids
    auto_ids = auto(text, add_special_tokens=False).input_ids
    print(json.dumps({
        "raw_ids": raw_ids,
        "auto_ids": auto_ids,
        "raw_decoded": raw.decode(raw_ids, skip_special_tokens=False),
        "auto_decoded": auto.decode(auto_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
        "eos_token": auto.eos_token,
        "vocab_size": len(auto),
    }))


if __name__ == "__main__":
    main()
