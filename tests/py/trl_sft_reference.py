"""Reference fine-tuning examples from TRL 1.16's own SFTTrainer dataset preparation, and chat
template renderings from transformers' apply_chat_template, for tests/sft.rs.

usage: trl_sft_reference.py OUT_DIR

Writes into OUT_DIR:
- tok_chatml/ (byte-level BPE, GPT-2 style post-processor, ChatML template with {% generation %}
  in tokenizer_config.json), tok_chatml_nogen/ (same tokenizer, the template without the tags),
  tok_llama/ (Llama style: TemplateProcessing "<s> $A" post-processor, add_bos_token true,
  Llama-3-style template in chat_template.jinja), tok_llama_pp/ (same without add_bos_token, so
  the post-processor alone adds BOS), tok_llama_nogen/;
- data files (JSONL, and the same rows as JSON, CSV and Parquet written by pandas/pyarrow);
- reference.json: {"cases": [{name, rust_tokenizer, data: {...[data] keys}, examples: [{input_ids,
  labels}]}], "renders": [{tokenizer, messages, add_generation_prompt, text}]}.

Each case's examples are SFTTrainer(...).train_dataset (input_ids, labels) built by TRL on a tiny
random Llama model: completion_only_loss=True for prompt/completion data, assistant_only_loss=True
for messages, max_length truncation, "wrapped" packing.
"""

import json
import os
import sys

import pandas as pd
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

# Reproducible references: one intra-op thread, so that no reduction depends on how many cores
# this machine has or how busy they are, and synchronous weight loading (transformers 5 otherwise
# materialises the tensors of from_pretrained on a thread pool).
torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)

CORPUS = [
    "What is the capital of France? Paris is the capital of France.",
    "Translate to German: good morning. Guten Morgen! Say hi, hello there.",
    "Zähle: eins, zwei, drei — fertig. The quick brown fox jumps over the lazy dog.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction: ### Input: ### Response: system user assistant",
] * 20

CHATML_GEN = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3_GEN = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Exercises what Hub templates use: namespace, loop controls, Python string methods, tojson,
# raise_exception (not triggered), whitespace control.
FANCY = """{%- set ns = namespace(found=false) -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{%- set ns.found = true -%}{%- endif -%}
{%- endfor -%}
{%- if not ns.found -%}<<SYS>>default<</SYS>>
{% endif -%}
{%- for m in messages -%}
  {%- if m.role not in ['system', 'user', 'assistant'] -%}{{ raise_exception('bad role ' + m.role) }}{%- endif -%}
  {%- if m.content.startswith('skip') -%}{%- continue -%}{%- endif -%}
  [{{ loop.index0 }}|{{ m.role.upper() }}] {{ m.content.strip() }} {{ m.content | tojson }} {{ [1, 2.5, none, true] | tojson }}
  {%- if m.content.endswith('STOP') -%}{%- break -%}{%- endif %}

{% endfor -%}
{%- if add_generation_prompt %}[ASSISTANT]{% endif %}"""


def strip_generation(t):
    for tag in ["{% generation %}", "{% endgeneration %}"]:
        t = t.replace(tag, "")
    return t


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
chatml_cfg = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None}
write_dir("tok_chatml", chatml, chatml_cfg, template_in_config=CHATML_GEN)
write_dir("tok_chatml_nogen", chatml, chatml_cfg, template_in_config=strip_generation(CHATML_GEN))
write_dir("tok_fancy", chatml, chatml_cfg, template_in_config=[{"name": "default", "template": FANCY}, {"name": "x", "template": "nope"}])

llama_specials = ["<unk>", "<s>", "</s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
llama = train_bpe(
    llama_specials,
    lambda t: processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", t.token_to_id("<s>"))]),
)
llama_cfg = {"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "rstrip": False, "normalized": False, "single_word": False, "special": True}, "eos_token": "</s>", "unk_token": "<unk>"}
write_dir("tok_llama", llama, dict(llama_cfg, add_bos_token=True), template_file=LLAMA3_GEN)
write_dir("tok_llama_pp", llama, llama_cfg, template_file=LLAMA3_GEN)
write_dir("tok_llama_nogen", llama, dict(llama_cfg, add_bos_token=True), template_file=strip_generation(LLAMA3_GEN))

PC_ROWS = [
    {"prompt": "What is the capital of France?", "completion": " Paris."},
    {"prompt": "Translate to German: good morning", "completion": " Guten Morgen"},
    {"prompt": "Say hi ", "completion": "hello there"},
    {"prompt": "Zähle: eins, zwei,", "completion": " drei — fertig."},
    {"prompt": "Long: " + "the quick brown fox " * 4, "completion": " dog"},
    {"prompt": "Q", "completion": " The quick brown fox jumps over the lazy dog again and again."},
    {"prompt": "x", "completion": " done</s><|endoftext|>"},
]
CONV_PC_ROWS = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "completion": [{"role": "assistant", "content": "Paris."}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
     "completion": [{"role": "assistant", "content": "hello there"}]},
]
TEXT_ROWS = [{"text": "The quick brown fox."}, {"text": "Guten Morgen, Paris!"}, {"text": "hello there</s>"}]
MSG_ROWS = [
    {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]},
    {"messages": [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "Zähle: eins, zwei,"},
        {"role": "assistant", "content": " drei — fertig. "},
    ]},
]


def alpaca_prompt(instruction, inp):
    # Must equal rankforge::sft::alpaca_prompt.
    if inp:
        return (
            "Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            f"### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n"
        )
    return (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\n{instruction}\n\n### Response:\n"
    )


ALPACA_ROWS = [
    {"instruction": "Translate to German", "input": "good morning", "output": "Guten Morgen"},
    {"instruction": "Say hi", "input": "", "output": "hello there"},
]
DOLLY_ROWS = [
    {"instruction": "What is the capital?", "context": "France", "response": "Paris.", "category": "closed_qa"},
    {"instruction": "Say hi", "context": "", "response": "hello", "category": "open_qa"},
]


def trl_examples(tok_dir, rows, max_length=None, packing=False, assistant_only_loss=False):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    )
    args = SFTConfig(
        output_dir=os.path.join(OUT, "trl_out"), report_to="none", max_length=max_length, packing=packing,
        packing_strategy="wrapped", completion_only_loss=True, assistant_only_loss=assistant_only_loss,
        use_cpu=True, shuffle_dataset=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    ds = trainer.train_dataset
    return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in ds]


def write_jsonl(name, rows):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


pc = write_jsonl("pc.jsonl", PC_ROWS)
text = write_jsonl("text.jsonl", TEXT_ROWS)
msgs = write_jsonl("messages.jsonl", MSG_ROWS)
conv_pc = write_jsonl("conv_pc.jsonl", CONV_PC_ROWS)
alpaca = write_jsonl("alpaca.jsonl", ALPACA_ROWS)
dolly = write_jsonl("dolly.jsonl", DOLLY_ROWS)
# The same rows in the other file types, written by pandas / pyarrow as users' tools do.
pd.DataFrame(PC_ROWS).to_csv(os.path.join(OUT, "pc.csv"), index=False)
pd.DataFrame(PC_ROWS).to_parquet(os.path.join(OUT, "pc.parquet"))
pd.DataFrame(MSG_ROWS).to_parquet(os.path.join(OUT, "messages.parquet"))
with open(os.path.join(OUT, "pc.json"), "w") as f:
    json.dump(PC_ROWS, f, indent=2, ensure_ascii=False)

as_pc = lambda rows, i, x, o: [{"prompt": alpaca_prompt(r[i], r[x]), "completion": r[o]} for r in rows]
d = lambda name: os.path.join(OUT, name)
cases = []
for tok_name in ["tok_chatml", "tok_llama", "tok_llama_pp"]:
    cases += [
        {"name": f"{tok_name}/prompt_completion", "rust_tokenizer": d(tok_name), "data": {"train": pc},
         "examples": trl_examples(d(tok_name), PC_ROWS)},
        {"name": f"{tok_name}/prompt_completion max_length 12", "rust_tokenizer": d(tok_name),
         "data": {"train": pc, "max_length": 12}, "examples": trl_examples(d(tok_name), PC_ROWS, max_length=12)},
        {"name": f"{tok_name}/conversational prompt_completion", "rust_tokenizer": d(tok_name),
         "data": {"train": conv_pc}, "examples": trl_examples(d(tok_name), CONV_PC_ROWS)},
        {"name": f"{tok_name}/text", "rust_tokenizer": d(tok_name), "data": {"train": text},
         "examples": trl_examples(d(tok_name), TEXT_ROWS)},
        {"name": f"{tok_name}/alpaca", "rust_tokenizer": d(tok_name), "data": {"train": alpaca},
         "examples": trl_examples(d(tok_name), as_pc(ALPACA_ROWS, "instruction", "input", "output"))},
        {"name": f"{tok_name}/dolly", "rust_tokenizer": d(tok_name), "data": {"train": dolly, "format": "dolly"},
         "examples": trl_examples(d(tok_name), as_pc(DOLLY_ROWS, "instruction", "context", "response"))},
    ]
cases.append({"name": "tok_chatml/prompt_completion packed 16", "rust_tokenizer": d("tok_chatml"),
              "data": {"train": pc, "max_length": 16, "packing": True},
              "examples": trl_examples(d("tok_chatml"), PC_ROWS, max_length=16, packing=True)})
for gen, nogen in [("tok_chatml", "tok_chatml_nogen"), ("tok_llama", "tok_llama_nogen")]:
    ref = trl_examples(d(gen), MSG_ROWS, assistant_only_loss=True)
    cases.append({"name": f"{gen}/messages", "rust_tokenizer": d(gen), "data": {"train": msgs}, "examples": ref})
    # Without {% generation %}, rankforge finds assistant turns by rendering prefixes: same tokens.
    cases.append({"name": f"{nogen}/messages", "rust_tokenizer": d(nogen), "data": {"train": msgs}, "examples": ref})

CONVERSATIONS = [
    [{"role": "user", "content": "  Hello there  "}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Zähle \"eins\"\n"},
     {"role": "assistant", "content": "skip this"}, {"role": "user", "content": "now STOP"},
     {"role": "assistant", "content": "never shown"}],
    [{"role": "user", "content": "a\tb"}, {"role": "assistant", "content": "ok"}],
]
renders = []
for tok_name in ["tok_chatml_nogen", "tok_llama", "tok_fancy"]:
    tok = AutoTokenizer.from_pretrained(d(tok_name))
    for conv in CONVERSATIONS:
        for agp in [False, True]:
            renders.append({"tokenizer": d(tok_name), "messages": conv, "add_generation_prompt": agp,
                            "text": tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp)})

with open(os.path.join(OUT, "reference.json"), "w") as f:
    json.dump({"cases": cases, "renders": renders}, f, indent=1, ensure_ascii=False)
print(f"{len(cases)} cases, {len(renders)} renders")
