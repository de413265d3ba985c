"""Reference side of tests/lm_eval.rs (`rankforge evaluate` on causal LMs): transformers 5,
rouge_score 0.1.2, sacrebleu 2.6.

usage:
  lm_eval_reference.py perplexity MODEL_DIR TEXT_JSONL MAX_LENGTH STRIDE
      The transformers perplexity guide's loop (https://huggingface.co/docs/transformers/perplexity,
      "Example: Calculating perplexity with GPT-2 in Transformers"), its code as written, on the
      "text" rows of TEXT_JSONL joined with "\n\n"; prints {"loss", "perplexity", "n_tokens"}.
  lm_eval_reference.py completion MODEL_DIR DATA_JSONL
      The completion-only loss of prompt/completion rows, masked as TRL's SFTTrainer masks them:
      tokenizer(prompt) and tokenizer(prompt + completion + eos_token), labels -100 on their
      common prefix; the loss of model(ids, labels=labels) (the mean over its shifted label
      tokens) weighted by that number of tokens, summed over the rows, divided by the total.
      Prints {"loss", "tokens"}.
  lm_eval_reference.py metrics PREDICTIONS_JSONL STEMMER(0|1)
      rouge_score's RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"]).score(reference,
      prediction) F-measures averaged over the rows, sacrebleu.corpus_bleu(predictions,
      [references]).score and the fraction of exact matches; prints them as one JSON object.
"""
import json
import os
import sys

import torch

torch.set_num_threads(1)
os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def perplexity(model_dir, text_jsonl, max_length, stride):
    model, tokenizer = load(model_dir)
    device = "cpu"
    test = {"text": [r["text"] for r in rows(text_jsonl)]}
    encodings = tokenizer("\n\n".join(test["text"]), return_tensors="pt")
    # The guide's loop, as written there.
    seq_len = encodings.input_ids.size(1)
    nll_sum = 0.0
    n_tokens = 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = encodings.input_ids[:, begin_loc:end_loc].to(device)
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
            # loss is calculated using CrossEntropyLoss which averages over valid labels
            # N.B. the model only calculates loss over trg_len - 1 labels, because it internally
            # shifts the labels to the left by 1.
            neg_log_likelihood = outputs.loss
        # Accumulate the total negative log-likelihood and the total number of tokens
        num_valid_tokens = (target_ids != -100).sum().item()  # number of valid tokens in target_ids
        batch_size = target_ids.size(0)
        num_loss_tokens = num_valid_tokens - batch_size  # subtract batch_size due to internal label shift
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    avg_nll = nll_sum / n_tokens  # average negative log-likelihood per token
    ppl = torch.exp(avg_nll)
    return {"loss": float(avg_nll), "perplexity": float(ppl), "n_tokens": int(n_tokens)}


def completion(model_dir, data_jsonl):
    model, tok = load(model_dir)
    total, tokens = 0.0, 0
    for r in rows(data_jsonl):
        prompt_ids = tok(r["prompt"]).input_ids
        ids = tok(r["prompt"] + r["completion"] + tok.eos_token).input_ids
        n = 0
        while n < min(len(prompt_ids), len(ids)) and prompt_ids[n] == ids[n]:
            n += 1
        labels = [-100] * n + ids[n:]
        count = sum(1 for l in labels[1:] if l != -100)
        with torch.no_grad():
            out = model(torch.tensor([ids]), labels=torch.tensor([labels]))
        total += out.loss.item() * count
        tokens += count
    return {"loss": total / tokens, "tokens": tokens}


def metrics(predictions_jsonl, stemmer):
    import sacrebleu
    from rouge_score import rouge_scorer
    data = rows(predictions_jsonl)
    preds = [r["prediction"] for r in data]
    refs = [r["reference"] for r in data]
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys, use_stemmer=stemmer)
    scores = [scorer.score(r, p) for p, r in zip(preds, refs)]
    out = {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in keys}
    out["bleu"] = sacrebleu.corpus_bleu(preds, [refs]).score
    out["exact_match"] = sum(p == r for p, r in zip(preds, refs)) / len(preds)
    return out


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "perplexity":
        out = perplexity(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "completion":
        out = completion(args[0], args[1])
    elif cmd == "metrics":
        out = metrics(args[0], args[1] == "1")
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
