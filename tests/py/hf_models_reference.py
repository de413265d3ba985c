"""Reference side of the pretrained-model conformance tests (tests/hf_models.rs).

usage:
  hf_models_reference.py make OUT_DIR
      Creates tiny random models with transformers (fixed seeds), saves each with
      save_pretrained under OUT_DIR/<name>/, reloads it from disk in fp32 (as a user would:
      AutoModelForCausalLM / AutoModel.from_pretrained(dir, dtype=torch.float32)) and writes
      OUT_DIR/refs/<name>.safetensors: `input_ids` (+ `attention_mask`, `token_type_ids` for
      encoders) and `output` (logits for causal LMs, last hidden states for encoders).
      OUT_DIR/manifest.json lists {name: {"kind": "causal"|"encoder", "file_dtype": ...}}.
  hf_models_reference.py logits IDS_SAFETENSORS OUT_DIR MODEL_DIR...
      For each MODEL_DIR, the logits of AutoModelForCausalLM.from_pretrained(MODEL_DIR) in fp32
      for `input_ids` of the ids file -> OUT_DIR/<basename of MODEL_DIR>.safetensors; prints
      {basename: {class, vocab_size, tied}} (checks that what rankforge writes loads in
      transformers and computes the same thing).

Models (hidden <= 64, 2 layers):
  gpt2                 GPT2LMHeadModel (tied)
  gpt2_fp16_sharded    GPT2LMHeadModel saved in fp16, in shards
  llama_tied           Llama, tied embeddings, GQA 4/2
  llama3_untied        Llama, untied, rope llama3, explicit head_dim, attention_bias, mlp_bias,
                       saved in shards (max_shard_size)
  llama_linear_bf16    Llama, rope linear, saved in bf16, config.json rewritten in the v4
                       spelling (top-level rope_theta + rope_scaling {type}, torch_dtype)
  qwen2_fp16           Qwen2 (q/k/v biases), GQA 4/1, tied, saved in fp16
  mistral_window       Mistral, GQA 4/2, sliding_window 5 < sequence length 12
  bert_mlm             BertForMaskedLM (keys bert.*, cls.predictions.*), padded batch
  bert_bare            BertModel (keys without prefix, pooler), padded batch
  distilbert_cls       DistilBertForSequenceClassification (pre_classifier, classifier)
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (AutoModel, AutoModelForCausalLM, BertConfig, BertForMaskedLM, BertModel,
                          DistilBertConfig, DistilBertForSequenceClassification, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

# Reproducible references: one intra-op thread, so that no reduction depends on how many cores
# this machine has or how busy they are, and synchronous weight loading (transformers 5 otherwise
# materialises the tensors of from_pretrained on a thread pool).
torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"

VOCAB = 320
T = 12


def randomize(model, seed):
    """Weights far from the N(0, 0.02) init, so outputs are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise * 0.15)
            elif name.endswith("weight"):  # norms
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def causal_models():
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64)
    yield "gpt2", GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)), {}
    yield "gpt2_fp16_sharded", GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                          n_positions=64)), {"dtype": torch.float16, "shard": "20KB"}
    yield "llama_tied", LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True,
                                                     rms_norm_eps=1e-5)), {}
    llama3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    yield "llama3_untied", LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=4, head_dim=12,
                                                        tie_word_embeddings=False, attention_bias=True,
                                                        mlp_bias=True, rope_parameters=llama3)), {"shard": "20KB"}
    linear = {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}
    yield "llama_linear_bf16", LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2, rope_parameters=linear,
                                                            tie_word_embeddings=False)), {"dtype": torch.bfloat16, "v4": True}
    yield "qwen2_fp16", Qwen2ForCausalLM(Qwen2Config(**{**common, "hidden_size": 64}, num_key_value_heads=1,
                                                     tie_word_embeddings=True)), {"dtype": torch.float16}
    yield "mistral_window", MistralForCausalLM(MistralConfig(**common, num_key_value_heads=2, sliding_window=5)), {}


def to_v4_spelling(model_dir):
    """Rewrites config.json the way transformers 4.x and most Hub checkpoints spell it."""
    path = os.path.join(model_dir, "config.json")
    cfg = json.load(open(path))
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    rope["type"] = rope.pop("rope_type")
    cfg["rope_scaling"] = rope
    cfg["torch_dtype"] = cfg.pop("dtype")
    json.dump(cfg, open(path, "w"), indent=2, sort_keys=True)


def save_causal(out, name, model, opts, ids):
    model_dir = os.path.join(out, name)
    if "dtype" in opts:
        model = model.to(opts["dtype"])
    model.save_pretrained(model_dir, max_shard_size=opts.get("shard", "5GB"))
    if opts.get("shard"):
        files = [f for f in os.listdir(model_dir) if f.endswith(".safetensors")]
        assert len(files) > 1 and os.path.exists(os.path.join(model_dir, "model.safetensors.index.json")), files
    if opts.get("v4"):
        to_v4_spelling(model_dir)
    loaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = loaded(ids).logits.contiguous()
    return logits


def encoder_models():
    bert = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-7)
    yield "bert_mlm", BertForMaskedLM(BertConfig(**bert))
    yield "bert_bare", BertModel(BertConfig(**{**bert, "layer_norm_eps": 1e-12}))
    yield "distilbert_cls", DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
                         num_labels=3))


def make(out):
    os.makedirs(os.path.join(out, "refs"), exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, VOCAB, (2, T), generator=g)
    manifest = {}
    for seed, (name, model, opts) in enumerate(causal_models()):
        torch.manual_seed(seed)
        randomize(model, seed)
        logits = save_causal(out, name, model.eval(), opts, ids)
        save_file({"input_ids": ids, "output": logits}, os.path.join(out, "refs", f"{name}.safetensors"))
        manifest[name] = {"kind": "causal", "file_dtype": str(opts.get("dtype", torch.float32))}
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # the second sequence is padded
    enc_ids = ids[:, :10].clone()
    enc_ids[1, 7:] = 0
    token_types = torch.zeros(2, 10, dtype=torch.long)
    token_types[:, 5:] = 1
    for seed, (name, model) in enumerate(encoder_models()):
        randomize(model, 100 + seed)
        model_dir = os.path.join(out, name)
        model.eval().save_pretrained(model_dir)
        loaded = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
        kwargs = {"attention_mask": mask}
        tensors = {"input_ids": enc_ids, "attention_mask": mask}
        if "distilbert" not in name:
            kwargs["token_type_ids"] = token_types
            tensors["token_type_ids"] = token_types
        with torch.no_grad():
            hidden = loaded(enc_ids, **kwargs).last_hidden_state.contiguous()
        tensors["output"] = hidden
        save_file(tensors, os.path.join(out, "refs", f"{name}.safetensors"))
        manifest[name] = {"kind": "encoder", "file_dtype": "torch.float32"}
    json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"), indent=2)


def logits(ids_path, out_dir, model_dirs):
    from safetensors.torch import load_file
    ids = load_file(ids_path)["input_ids"]
    report = {}
    for model_dir in model_dirs:
        name = os.path.basename(os.path.normpath(model_dir))
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            out = model(ids).logits.contiguous()
        save_file({"output": out}, os.path.join(out_dir, f"{name}.safetensors"))
        emb = model.get_input_embeddings().weight
        report[name] = {"class": type(model).__name__, "vocab_size": model.config.vocab_size,
                        "tied": model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()}
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "logits":
        logits(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)
