#!/usr/bin/env bash
# Quick start on a fresh machine: setup, a BPE tokenizer for the bundled corpus, a small GPT
# trained from scratch on CPU for ~3 minutes, then generated samples and the perplexity of
# held-out text.
# Re-running resumes/reuses what is already there (the run finishes at once when complete).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
B=target/release/rankforge

if [ ! -f runs/tok-kjv-4k/tokenizer.json ]; then
  echo "== training a 4096-token byte-level BPE tokenizer on data/kjv.txt"
  $B tokenizer train --input data/kjv.txt --vocab-size 4096 --kind bpe --output runs/tok-kjv-4k
fi

echo "== training configs/gpt_mini_pretrain_cpu.toml (run directory runs/gpt_mini)"
$B train --config configs/gpt_mini_pretrain_cpu.toml "$@"

echo
echo "== samples from runs/gpt_mini/final"
for prompt in "And it came to pass" "In the beginning" "The LORD is my shepherd"; do
  printf -- '--- %s' "$prompt"
  $B generate --model runs/gpt_mini/final --prompt "$prompt" --max-new-tokens 60 \
    --temperature 0.8 --top-k 40 --repetition-penalty 1.1 --seed 1
done

# The recipe holds out the last 2 % of data/kjv.txt (val_fraction = 0.02); the Book of
# Revelation (its last 62 kB) lies inside it, so this is text the model never trained on.
echo
echo "== perplexity of runs/gpt_mini/final on held-out text (the Book of Revelation)"
sed -n '/^Revelation 1$/,$p' data/kjv.txt > runs/gpt_mini/heldout.txt
$B evaluate --model runs/gpt_mini/final --data runs/gpt_mini/heldout.txt

echo
echo "metrics: runs/gpt_mini/metrics.jsonl; model for transformers: runs/gpt_mini/final"
echo "loss curve: runs/gpt_mini/curves.svg (any run, any metric: $B plot runs/gpt_mini --out loss.png)"
echo "TensorBoard: .venv/bin/tensorboard --logdir runs/gpt_mini/tb"
