#!/usr/bin/env bash
# Masked-LM fine-tuning step benchmark (issue 13), side by side, alternating rounds:
#   rankforge   `rankforge bench --config bench/mlm_bert_base.toml` (a masked-LM recipe)
#   PyTorch     bench/hf_mlm.py (transformers AutoModelForMaskedLM + DataCollatorForLanguageModeling
#               + torch AdamW)
# on the BERT-base-shaped random BertForMaskedLM of bench/make_bert_mlm.py (made once under
# runs/bench-bert-mlm: 12 layers, hidden 768, the MLM head tied to the word embeddings), full
# fine-tuning, rows of random non-special token ids masked afresh each step (15 %: 80/10/10),
# fp32, same batch, sequence length and threads.
# Odd rounds run rankforge first, even rounds PyTorch first, so a drift in machine load hits both.
# Prints a Markdown table of medians and the ratio; raw rows go to bench/results/mlm-<date>.jsonl,
# both sides' stderr to bench/results/mlm-<date>.log.
#
#   bench/bench_mlm.sh                       # ROUNDS=3, all cores, batch 8 x 128, 5 timed steps
#   ROUNDS=5 THREADS=2 bench/bench_mlm.sh
#   PY_ONLY=1 ROUNDS=1 bench/bench_mlm.sh    # only the PyTorch reference (no rankforge binary needed)
#   FUSED=1 bench/bench_mlm.sh               # PyTorch with AdamW(fused=True)
#   knobs: ROUNDS THREADS STEPS WARMUP BATCH SEQ DEVICE MODEL MAKE_ARGS PT_ENV PY_ONLY FUSED RF (the binary)
#   PT_ENV: environment for the PyTorch side only, e.g. the malloc settings rankforge applies to
#   itself (src/device.rs keep_freed_memory):
#   PT_ENV="MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=67108864"
#   GPU (fp32 weights under bf16 autocast on both sides):
#   DEVICE=cuda BATCH=32 SEQ=512 STEPS=20 WARMUP=5 bench/bench_mlm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-$(nproc)} STEPS=${STEPS:-5} WARMUP=${WARMUP:-2}
BATCH=${BATCH:-8} SEQ=${SEQ:-128} DEVICE=${DEVICE:-cpu} MODEL=${MODEL:-runs/bench-bert-mlm}
MAKE_ARGS=${MAKE_ARGS:-} PT_ENV=${PT_ENV:-} PY_ONLY=${PY_ONLY:-} FUSED=${FUSED:-}
PY=.venv/bin/python RF=${RF:-target/release/rankforge}
stamp=$(date +%Y%m%d-%H%M%S)
out=bench/results/mlm-$stamp.jsonl log=bench/results/mlm-$stamp.log
if [ -z "$PY_ONLY" ] && [ ! -x "$RF" ]; then
  echo "error: $RF not found: build it (cargo build --release --workspace --bins), or set PY_ONLY=1" >&2
  exit 2
fi
mkdir -p bench/results
# shellcheck disable=SC2086 # MAKE_ARGS is a list of flags
[ -f "$MODEL/model.safetensors" ] || "$PY" bench/make_bert_mlm.py "$MODEL" $MAKE_ARGS >&2
if [ "$DEVICE" = cuda ]; then precision=bf16; else precision=fp32; fi

RF_CMD=("$RF" bench --config bench/mlm_bert_base.toml --steps "$STEPS" --warmup "$WARMUP"
    --set model.path="$MODEL" --set data.train="$MODEL/unused.txt" --set data.max_length="$SEQ"
    --set train.global_batch_size="$BATCH" --set train.micro_batch_size="$BATCH"
    --set train.threads="$THREADS" --set train.device="$DEVICE" --set train.precision="$precision")
PT_CMD=("$PY" bench/hf_mlm.py --model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS"
    --warmup "$WARMUP" --threads "$THREADS" --device "$DEVICE" --dtype "$precision")
if [ -n "$FUSED" ]; then PT_CMD+=(--fused); fi

# One run: its JSON line, tagged with the round, appended to $out; stderr to $log. A failed run
# stops the benchmark with the end of its stderr.
run_one() { # $1: round, $2: name, rest: the command
  local round=$1 name=$2; shift 2
  echo "== round $round: $name: $*" >> "$log"
  local line
  # shellcheck disable=SC2086 # PT_ENV is a list of VAR=value words
  if ! line=$(if [ "$name" = pytorch ]; then env $PT_ENV "$@"; else "$@"; fi 2>> "$log" | tail -n 1); then
    echo "error: the $name run of round $round failed; the end of $log:" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
  case "$line" in
    "{"*) echo "${line/#\{/{\"round\": $round, }" >> "$out" ;;
    *) echo "error: the $name run of round $round printed no JSON line (see $log)" >&2; exit 1 ;;
  esac
}

for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS (rustc running: $(pgrep -c rustc || true))" >&2
  if [ -n "$PY_ONLY" ]; then
    run_one "$r" pytorch "${PT_CMD[@]}"
  elif [ $((r % 2)) = 1 ]; then
    run_one "$r" rankforge "${RF_CMD[@]}"
    run_one "$r" pytorch "${PT_CMD[@]}"
  else
    run_one "$r" pytorch "${PT_CMD[@]}"
    run_one "$r" rankforge "${RF_CMD[@]}"
  fi
done

"$PY" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    groups.setdefault("rankforge" if r["impl"] == "rankforge" else "pytorch", []).append(r)
names = {"rankforge": "rankforge (`rankforge bench`)",
         "pytorch": "transformers + PyTorch (`bench/hf_mlm.py`)"}
med = {k: statistics.median(r["step_ms"] for r in rs) for k, rs in groups.items()}
first = groups.get("pytorch", rows)[0]  # the reference's row names batch, seq and threads
print(f"results: {sys.argv[1]}  ({first.get('device', 'cpu')} {first.get('dtype', 'fp32')}, "
      f"threads={first['threads']}, batch={first['batch']}, seq={first['seq']}, "
      f"params={first.get('params', '?'):,}, rounds={max(len(v) for v in groups.values())})\n")
print("| implementation | median step ms | median tokens/s | median examples/s | masked tokens / step | rankforge / PyTorch |")
print("|---|---|---|---|---|---|")
for k in ("rankforge", "pytorch"):
    if k not in groups:
        continue
    ms = med[k]
    ratio = f"**{med['pytorch'] / ms:.2f}×**" if k == "rankforge" and "pytorch" in med else ""
    masked = [m for r in groups[k] for m in r.get("masked_tokens", [])]
    rate = f"{statistics.mean(masked):.0f} ({statistics.mean(masked) / (first['batch'] * first['seq']):.1%})" if masked else ""
    print(f"| {names[k]} | {ms:.0f} | {first['batch'] * first['seq'] * 1e3 / ms:.0f} | "
          f"{first['batch'] * 1e3 / ms:.2f} | {rate} | {ratio} |")
keys = [k for k in ("rankforge", "pytorch") if k in groups]
print("\nPer round, step ms:\n")
print("| round | " + " | ".join(keys) + " |")
print("|---" * (len(keys) + 1) + "|")
for n in sorted({r["round"] for r in rows}):
    cells = [next((f"{r['step_ms']:.0f}" for r in groups[k] if r["round"] == n), "") for k in keys]
    print(f"| {n} | " + " | ".join(cells) + " |")
PY
