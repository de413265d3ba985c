#!/usr/bin/env bash
# Fine-tuning step benchmark (issue 5), side by side in the same run, alternating rounds:
#   rankforge LoRA   (`rankforge bench` on a `model.kind = "hf"` recipe with `[lora]`)
#   PEFT LoRA        (bench/peft_llama.py: transformers + peft.get_peft_model)
#   rankforge full   (the same recipe without `[lora]`)
#   PyTorch full     (bench/peft_llama.py --full)
# on the small random Llama of bench/make_llama.py (made once under runs/bench-llama), random
# tokens with every position labelled, fp32, same batch, sequence length and threads.
# Prints a Markdown table of medians and ratios; raw rows go to bench/results/lora-<date>.jsonl.
#
#   bench/bench_lora.sh                                  # ROUNDS=3, all cores, batch 4 x 256
#   ROUNDS=5 THREADS=2 TARGETS=all-linear bench/bench_lora.sh
#   knobs: ROUNDS THREADS STEPS WARMUP BATCH SEQ R ALPHA TARGETS (q_proj,v_proj | all-linear)
#   PT_ENV: environment for the PyTorch side only, e.g. the malloc settings rankforge applies
#   to itself (src/device.rs keep_freed_memory), to see what they are worth to PyTorch:
#   PT_ENV="MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=67108864"
#   GPU (bf16: LoRA on a bf16 base, full fine-tuning with fp32 weights under bf16 autocast, on
#   both sides), with a bigger model made by make_llama.py's flags:
#   DEVICE=cuda MODEL=runs/bench-llama-1b MAKE_ARGS="--hidden 2048 --layers 22 --heads 32 \
#     --kv-heads 4 --intermediate 5632 --vocab 32000" BATCH=8 SEQ=1024 bench/bench_lora.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-$(nproc)} STEPS=${STEPS:-10} WARMUP=${WARMUP:-3}
BATCH=${BATCH:-4} SEQ=${SEQ:-256} R=${R:-16} ALPHA=${ALPHA:-32} TARGETS=${TARGETS:-q_proj,v_proj}
DEVICE=${DEVICE:-cpu} MODEL=${MODEL:-runs/bench-llama} MAKE_ARGS=${MAKE_ARGS:-} PT_ENV=${PT_ENV:-}
PY=.venv/bin/python RF=target/release/rankforge
out=bench/results/lora-$(date +%Y%m%d-%H%M%S).jsonl
mkdir -p bench/results
# shellcheck disable=SC2086 # MAKE_ARGS is a list of flags
[ -f "$MODEL/model.safetensors" ] || "$PY" bench/make_llama.py "$MODEL" $MAKE_ARGS >&2
if [ "$DEVICE" = cuda ]; then precision=bf16 dtype=auto pydtype=bf16; else precision=fp32 dtype=fp32 pydtype=fp32; fi

# The recipes: [data] is required by the recipe format but `rankforge bench` never reads it
# (it times the fine-tuning step on random tokens); data.max_length is the sequence length.
if [ "$TARGETS" = all-linear ]; then toml_targets='"all-linear"'
else toml_targets="[$(echo "$TARGETS" | sed 's/[^,][^,]*/"&"/g')]"; fi
recipe() { # $1: file, $2: "lora" or "full"
  cat > "$1" <<TOML
[run]
dir = "runs/bench-lora-run"
[model]
kind = "hf"
path = "$MODEL"
dtype = "$dtype"
[data]
train = "$MODEL/unused.jsonl"
max_length = $SEQ
[train]
global_batch_size = $BATCH
micro_batch_size = $BATCH
device = "$DEVICE"
precision = "$precision"
threads = $THREADS
TOML
  [ "$2" = full ] || printf '[lora]\nr = %s\nalpha = %s\ndropout = 0.0\ntarget_modules = %s\n' "$R" "$ALPHA" "$toml_targets" >> "$1"
}
recipe "$MODEL/bench-lora.toml" lora
recipe "$MODEL/bench-full.toml" full

common=(--batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --device "$DEVICE" --dtype "$pydtype")
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS (rustc running: $(pgrep -c rustc || true))" >&2
  "$RF" bench --config "$MODEL/bench-lora.toml" --steps "$STEPS" --warmup "$WARMUP" 2>/dev/null | sed "s/^{/{\"round\":$r,/" >> "$out"
  # shellcheck disable=SC2086 # PT_ENV is a list of VAR=value words
  env $PT_ENV "$PY" bench/peft_llama.py --model "$MODEL" --lora-r "$R" --lora-alpha "$ALPHA" --targets "$TARGETS" "${common[@]}" 2>/dev/null | sed "s/^{/{\"round\": $r, /" >> "$out"
  "$RF" bench --config "$MODEL/bench-full.toml" --steps "$STEPS" --warmup "$WARMUP" 2>/dev/null | sed "s/^{/{\"round\":$r,/" >> "$out"
  # shellcheck disable=SC2086
  env $PT_ENV "$PY" bench/peft_llama.py --model "$MODEL" --full "${common[@]}" 2>/dev/null | sed "s/^{/{\"round\": $r, /" >> "$out"
done
"$PY" bench/lora_table.py "$out"
