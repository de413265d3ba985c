"""Reference preference pairs from TRL 1.16's own DPOTrainer dataset preparation and
DataCollatorForPreference, for tests/dpo_data.rs.

usage: trl_dpo_reference.py OUT_DIR

Writes into OUT_DIR:
- tok_chatml/ (Qwen2 style: byte-level BPE, ChatML template, eos = pad = <|endoftext|>),
  tok_llama/ (Llama style: "<s> $A" post-processor, add_bos_token, a Llama-3-style template in
  chat_template.jinja, eos </s>, no pad token: TRL pads with EOS), tok_noeos/ (no eos_token, no
  template: for the bad-input tests);
- data files: standard.jsonl (+ standard.parquet, standard.csv), conversational.jsonl
  (+ conversational.parquet), implicit.jsonl, implicit_conv.jsonl, and dict/ (a save_to_disk
  DatasetDict whose train split is standard.jsonl's rows and whose test split is two more);
- reference.json: {"cases": [{name, tokenizer, train, max_length, pad_id, pairs: [{prompt_ids,
  chosen_ids, rejected_ids}], val_pairs, batch: {input_ids, attention_mask, completion_mask}}]}.

Each case's pairs are DPOTrainer(...).train_dataset (and .eval_dataset for dict/) built by TRL on
a tiny random Llama model with DPOConfig(max_length=...); its batch is
trainer.data_collator(all the pairs), the collator TRL built for it.
"""

import json
import os
import sys

import pandas as pd
import torch
from datasets import Dataset, DatasetDict, disable_progress_bars
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import DPOConfig, DPOTrainer

torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"
disable_progress_bars()

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)

CORPUS = [
    "What is the capital of France? Paris is the capital of France. Berlin is in Germany.",
    "Say hi, hello there. Go away! Translate to German: good morning. Guten Morgen!",
    "Zähle: eins, zwei, drei — fertig. The quick brown fox jumps over the lazy dog.",
    "Human: Assistant: system user assistant. It is blue. It is green. The sky is blue.",
] * 20

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3 = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


def train_bpe(specials, post):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = post(tok)
    return tok


def write_dir(name, tok, config, template_in_config=None, template_file=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    config = dict(config, tokenizer_class="PreTrainedTokenizerFast")
    if template_in_config is not None:
        config["chat_template"] = template_in_config
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if template_file is not None:
        with open(os.path.join(d, "chat_template.jinja"), "w") as f:
            f.write(template_file)
    return d


chatml = train_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], lambda t: processors.ByteLevel(trim_offsets=False))
write_dir("tok_chatml", chatml, {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None},
          template_in_config=CHATML)
llama = train_bpe(
    ["<unk>", "<s>", "</s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    lambda t: processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", t.token_to_id("<s>"))]),
)
write_dir("tok_llama", llama, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True},
          template_file=LLAMA3)
noeos = train_bpe(["<pad>"], lambda t: processors.ByteLevel(trim_offsets=False))
write_dir("tok_noeos", noeos, {"pad_token": "<pad>", "bos_token": None, "eos_token": None, "unk_token": None})

LONG = " the quick brown fox jumps over the lazy dog" * 3
STANDARD = [
    {"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " Berlin."},
    # The prompt ends in a space that merges into the completion's first token.
    {"prompt": "Say hi ", "chosen": "hello there", "rejected": "go away!"},
    # EOS already written: not appended twice.
    {"prompt": "Zähle: eins, zwei,", "chosen": " drei — fertig.</s><|endoftext|>", "rejected": " vier"},
    # Identical completions: kept, as TRL keeps them.
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " blue."},
    # Longer than max_length: cut in the batch, keeping the start.
    {"prompt": "Translate to German: good morning.", "chosen": LONG, "rejected": " Guten Morgen!"},
    # The prompt alone fills max_length: dropped.
    {"prompt": "Fill:" + LONG, "chosen": " yes", "rejected": " no"},
]
CONVERSATIONAL = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}], "rejected": [{"role": "assistant", "content": "Berlin."}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
     "chosen": [{"role": "assistant", "content": "hello there"}], "rejected": [{"role": "assistant", "content": "go away!"}]},
    {"prompt": [{"role": "user", "content": "Translate to German: good morning."}],
     "chosen": [{"role": "assistant", "content": "Guten Morgen!" + LONG}], "rejected": [{"role": "assistant", "content": "no"}]},
    {"prompt": [{"role": "user", "content": "Fill:" + LONG}],
     "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}]},
]
IMPLICIT = [
    {"chosen": "Human: What color is the sky? Assistant: It is blue.", "rejected": "Human: What color is the sky? Assistant: It is green."},
    {"chosen": "Human: Say hi Assistant: hello", "rejected": "Human: Say hi Assistant: hello there"},
    {"chosen": "Human: Translate to German: good morning. Assistant: Guten Morgen!" + LONG,
     "rejected": "Human: Translate to German: good morning. Assistant: no"},
    {"chosen": "Human: Fill:" + LONG + " Assistant: yes", "rejected": "Human: Fill:" + LONG + " Assistant: no"},
]
IMPLICIT_CONV = [
    {"chosen": [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "It is blue."}],
     "rejected": [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "It is green."}]},
    {"chosen": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hello"}],
     "rejected": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "go away!"}]},
    {"chosen": [{"role": "user", "content": "Translate to German: good morning."}, {"role": "assistant", "content": "Guten Morgen!" + LONG}],
     "rejected": [{"role": "user", "content": "Translate to German: good morning."}, {"role": "assistant", "content": "no"}]},
    {"chosen": [{"role": "user", "content": "Fill:" + LONG}, {"role": "assistant", "content": "yes"}],
     "rejected": [{"role": "user", "content": "Fill:" + LONG}, {"role": "assistant", "content": "no"}]},
]
TEST = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "Say hi", "chosen": " hello", "rejected": " go away!"},
]


def write_jsonl(name, rows):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


d = lambda name: os.path.join(OUT, name)
write_jsonl("standard.jsonl", STANDARD)
write_jsonl("conversational.jsonl", CONVERSATIONAL)
write_jsonl("implicit.jsonl", IMPLICIT)
write_jsonl("implicit_conv.jsonl", IMPLICIT_CONV)
pd.DataFrame(STANDARD).to_parquet(d("standard.parquet"))
pd.DataFrame(STANDARD).to_csv(d("standard.csv"), index=False)
pd.DataFrame(CONVERSATIONAL).to_parquet(d("conversational.parquet"))
DatasetDict({"train": Dataset.from_list(STANDARD), "test": Dataset.from_list(TEST)}).save_to_disk(d("dict"))


def plain(ds):
    return [{k: list(r[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in ds]


def trl_case(name, tok_name, rows, max_length, train, eval_rows=None):
    tok = AutoTokenizer.from_pretrained(d(tok_name))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    # An in-memory model has no path to load the reference from: pass it.
    model, ref_model = LlamaForCausalLM(config), LlamaForCausalLM(config)
    args = DPOConfig(output_dir=d("trl_out"), report_to="none", max_length=max_length, use_cpu=True)
    trainer = DPOTrainer(
        model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None, processing_class=tok,
    )
    pairs = plain(trainer.train_dataset)
    assert pairs, f"{name}: TRL kept no pair"
    batch = trainer.data_collator([dict(p) for p in pairs])
    return {
        "name": name, "tokenizer": d(tok_name), "train": train, "max_length": max_length,
        "pad_id": trainer.data_collator.pad_token_id, "pairs": pairs,
        "val_pairs": plain(trainer.eval_dataset) if eval_rows else [],
        "batch": {k: batch[k].tolist() for k in ("input_ids", "attention_mask", "completion_mask")},
    }


cases = []
for tok_name in ["tok_chatml", "tok_llama"]:
    for max_length in [40, 1024]:
        cases += [
            trl_case(f"{tok_name}/standard/{max_length}", tok_name, STANDARD, max_length, d("standard.jsonl")),
            trl_case(f"{tok_name}/conversational/{max_length}", tok_name, CONVERSATIONAL, max_length, d("conversational.jsonl")),
            trl_case(f"{tok_name}/implicit/{max_length}", tok_name, IMPLICIT, max_length, d("implicit.jsonl")),
            trl_case(f"{tok_name}/implicit_conv/{max_length}", tok_name, IMPLICIT_CONV, max_length, d("implicit_conv.jsonl")),
        ]
    cases.append(trl_case(f"{tok_name}/dict", tok_name, STANDARD, 40, d("dict"), eval_rows=TEST))

with open(d("reference.json"), "w") as f:
    json.dump({"cases": cases}, f, indent=1, ensure_ascii=False)
print(f"{len(cases)} cases")
