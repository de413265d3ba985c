#!/usr/bin/env bash
# Masked-LM pretraining on the bundled corpus (configs/kjv_mlm_cpu.toml, a few minutes on CPU),
# then fill-mask on a few verses with a blank. Nothing is downloaded. Re-running resumes or
# reuses what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
B=target/release/rankforge

if [ ! -f runs/tok-kjv-wp8k/tokenizer.json ]; then
  echo "== training an 8192-token WordPiece (BERT) tokenizer on data/kjv.txt"
  $B tokenizer train --input data/kjv.txt --vocab-size 8192 --kind wordpiece --output runs/tok-kjv-wp8k
fi

echo "== training configs/kjv_mlm_cpu.toml (run directory runs/kjv-mlm)"
$B train --config configs/kjv_mlm_cpu.toml "$@"

echo
for text in "In the beginning God created the heaven and the [MASK]." \
            "The LORD is my [MASK]; I shall not want." \
            "And God said, Let there be [MASK]: and there was light." \
            "For God so loved the [MASK], that he gave his only begotten Son."; do
  echo "--- $text"
  $B fill-mask --model runs/kjv-mlm/final --text "$text" --top-k 5
done
echo
echo "metrics: runs/kjv-mlm/metrics.jsonl; model for transformers: runs/kjv-mlm/final"
