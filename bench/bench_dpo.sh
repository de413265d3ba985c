#!/usr/bin/env bash
# LoRA DPO step benchmark (issue 14), side by side, alternating rounds:
#   rankforge          `rankforge bench --config bench/dpo_llama_small.toml` (reference = adapters off)
#   rankforge precomp  the same with task.precompute_ref = true (reference log-probs computed once)
#   rankforge SFT      the same model, [lora] and optimizer fine-tuning (SFT) on BATCH sequences of SEQ
#                      tokens (a pair's prompt + chosen, every position labelled): "DPO step time
#                      relative to SFT on the same pairs"
#   TRL                bench/trl_dpo.py (TRL's DPOTrainer + PEFT LoRA, reference = adapter disabled)
# on the small random Llama of `bench/make_llama.py --tokenizer` (made once under
# runs/bench-llama-dpo: 31.8 M parameters, GQA, untied head, a word-level tokenizer), LoRA r 8,
# alpha 16 on q_proj/v_proj, BATCH synthetic pairs of a SEQ/2-token prompt and SEQ/2-token chosen
# and rejected completions, fp32, same threads, sigmoid loss, beta 0.1, AdamW lr 1e-4, clip 1.0.
# Odd rounds run rankforge first, even rounds TRL first, so a drift in machine load hits both.
# Every run's peak resident memory is measured the same way, by /usr/bin/time -f %M (the child's
# ru_maxrss). Prints a Markdown table of medians and the ratios; raw rows go to
# bench/results/dpo-<date>.jsonl, every run's stderr to bench/results/dpo-<date>.log.
#
#   bench/bench_dpo.sh                       # ROUNDS=3, all cores, 8 pairs x 256 tokens, 5 timed steps
#   ROUNDS=1 STEPS=2 WARMUP=1 bench/bench_dpo.sh
#   knobs: ROUNDS THREADS STEPS WARMUP BATCH MICRO SEQ MODEL RF (the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-$(nproc)} STEPS=${STEPS:-5} WARMUP=${WARMUP:-2}
BATCH=${BATCH:-8} MICRO=${MICRO:-$BATCH} SEQ=${SEQ:-256} MODEL=${MODEL:-runs/bench-llama-dpo}
PY=.venv/bin/python RF=${RF:-target/release/rankforge} RECIPE=bench/dpo_llama_small.toml
stamp=$(date +%Y%m%d-%H%M%S)
out=bench/results/dpo-$stamp.jsonl log=bench/results/dpo-$stamp.log
if [ ! -x "$RF" ]; then
  echo "error: $RF not found: build it (cargo build --release --workspace --bins)" >&2
  exit 2
fi
if [ ! -x /usr/bin/time ]; then
  echo "error: /usr/bin/time not found (it measures every run's peak resident memory): apt-get install time" >&2
  exit 2
fi
mkdir -p bench/results
[ -f "$MODEL/tokenizer.json" ] || "$PY" bench/make_llama.py "$MODEL" --tokenizer >&2

# The SFT recipe: the DPO recipe without its [task] section (task.kind defaults to causal-LM
# fine-tuning), so model, [lora], optimizer and threads stay the same.
sft_recipe=$MODEL/bench-sft.toml
awk '/^\[/ { skip = ($0 == "[task]") } !skip' "$RECIPE" > "$sft_recipe"

set_common=(--steps "$STEPS" --warmup "$WARMUP" --set model.path="$MODEL" --set data.train="$MODEL/unused.jsonl"
    --set data.max_length="$SEQ" --set train.global_batch_size="$BATCH" --set train.micro_batch_size="$MICRO"
    --set train.threads="$THREADS")
RF_DPO=("$RF" bench --config "$RECIPE" "${set_common[@]}")
RF_PRE=("$RF" bench --config "$RECIPE" "${set_common[@]}" --set task.precompute_ref=true)
RF_SFT=("$RF" bench --config "$sft_recipe" "${set_common[@]}")
TRL=("$PY" bench/trl_dpo.py --model "$MODEL" --batch "$BATCH" --micro-batch "$MICRO" --seq "$SEQ"
    --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS")

# One run: its JSON line, tagged with the round, the name and the peak RSS /usr/bin/time saw,
# appended to $out; stderr to $log. A failed run stops the benchmark with the end of its stderr.
run_one() { # $1: round, $2: name, rest: the command
  local round=$1 name=$2; shift 2
  echo "== round $round: $name: $*" >> "$log"
  local line rss_file
  rss_file=$(mktemp)
  if ! line=$(/usr/bin/time -o "$rss_file" -f %M "$@" 2>> "$log" | tail -n 1); then
    echo "error: the $name run of round $round failed; the end of $log:" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
  local rss_kb
  rss_kb=$(tail -n 1 "$rss_file"); rm -f "$rss_file"
  case "$line" in
    "{"*) echo "${line/#\{/{\"round\": $round, \"name\": \"$name\", \"maxrss_kb\": $rss_kb, }" >> "$out" ;;
    *) echo "error: the $name run of round $round printed no JSON line (see $log)" >&2; exit 1 ;;
  esac
}

rankforge_runs() { # $1: round
  run_one "$1" rankforge "${RF_DPO[@]}"
  run_one "$1" rankforge_precompute "${RF_PRE[@]}"
  run_one "$1" rankforge_sft "${RF_SFT[@]}"
}

for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS (rustc running: $(pgrep -c rustc || true))" >&2
  if [ $((r % 2)) = 1 ]; then
    rankforge_runs "$r"
    run_one "$r" trl "${TRL[@]}"
  else
    run_one "$r" trl "${TRL[@]}"
    rankforge_runs "$r"
  fi
done

"$PY" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    groups.setdefault(r["name"], []).append(r)
names = {"rankforge": "rankforge (`rankforge bench`, reference = adapters off)",
         "rankforge_precompute": "rankforge, `task.precompute_ref = true`",
         "trl": "TRL DPOTrainer + PEFT (`bench/trl_dpo.py`)",
         "rankforge_sft": "rankforge SFT on the prompt + chosen sequences"}
ms = {k: statistics.median(r["step_ms"] for r in rs) for k, rs in groups.items()}
rss = {k: statistics.median(r["maxrss_kb"] / 1024 for r in rs) for k, rs in groups.items()}
first = groups["trl"][0]
print(f"results: {sys.argv[1]}  (cpu fp32, threads={first['threads']}, pairs/step={first['batch']}, "
      f"micro={first['micro_batch']}, seq={first['seq']}, params={first['params']:,}, "
      f"trainable={first['trainable_params']:,}, rounds={max(len(v) for v in groups.values())})\n")
print("| implementation | median step ms | pairs/s | peak RSS MB | throughput vs TRL | peak RSS vs TRL |")
print("|---|---|---|---|---|---|")
for k in ("rankforge", "rankforge_precompute", "trl", "rankforge_sft"):
    if k not in groups:
        continue
    dpo = k != "rankforge_sft"
    tp = f"**{ms['trl'] / ms[k]:.2f}×**" if dpo and k != "trl" else ""
    mem = f"**{rss[k] / rss['trl']:.2f}×**" if dpo and k != "trl" else ""
    pairs = f"{first['batch'] * 1e3 / ms[k]:.2f}" if dpo else ""
    print(f"| {names[k]} | {ms[k]:.0f} | {pairs} | {rss[k]:.0f} | {tp} | {mem} |")
if "rankforge_sft" in ms:
    print(f"\nDPO step / SFT step (same pairs, rankforge): live reference "
          f"{ms['rankforge'] / ms['rankforge_sft']:.2f}×, precomputed reference "
          f"{ms['rankforge_precompute'] / ms['rankforge_sft']:.2f}×")
keys = [k for k in ("rankforge", "rankforge_precompute", "trl", "rankforge_sft") if k in groups]
print("\nPer round, step ms:\n")
print("| round | " + " | ".join(keys) + " |")
print("|---" * (len(keys) + 1) + "|")
for n in sorted({r["round"] for r in rows}):
    cells = [next((f"{r['step_ms']:.0f}" for r in groups[k] if r["round"] == n), "") for k in keys]
    print(f"| {n} | " + " | ".join(cells) + " |")
PY
