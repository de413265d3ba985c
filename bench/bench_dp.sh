#!/usr/bin/env bash
# Data-parallel step time on CPU: the seed GPT (6L/6H/384d, T=256, V=30000, batch 8) trained by
# 1 rank with THREADS threads vs 2 ranks with THREADS/2 threads each (same total threads), both
# under rankforge-launch with the same step function as `rankforge train` (`rankforge bench`).
# Rounds alternate; prints medians over rounds of each configuration's median step time.
#
#   bench/bench_dp.sh                   # knobs: ROUNDS (3), THREADS (nproc), STEPS (10), WARMUP (3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-$(nproc)} STEPS=${STEPS:-10} WARMUP=${WARMUP:-3}
out=bench/results/dp-$(date +%Y%m%d-%H%M%S).jsonl
mkdir -p bench/results
run() { # ranks threads_per_rank
  target/release/rankforge-launch --nproc-per-node "$1" -- bench --config configs/gpt_small_pretrain.toml \
    --steps "$STEPS" --warmup "$WARMUP" --set model.vocab_size=30000 --set model.dropout=0.0 \
    --set train.device=cpu --set train.global_batch_size=8 --set train.micro_batch_size=8 \
    --set train.threads="$2" 2>/dev/null | grep '"impl"' | sed 's/^\[rank 0\] //' >> "$out"
}
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  run 1 "$THREADS"
  run 2 $((THREADS / 2 > 0 ? THREADS / 2 : 1))
done
.venv/bin/python - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows: by.setdefault(r["ranks"], []).append(r)
one = statistics.median(r["step_ms"] for r in by[1])
print(f"results: {sys.argv[1]}  (params={rows[0]['params']}, batch={rows[0]['batch']}, T={rows[0]['block_size']})")
print("| ranks × threads | median step ms | tokens/s | vs 1 rank | runs |")
print("|---|---|---|---|---|")
for n, rs in sorted(by.items()):
    ms = statistics.median(r["step_ms"] for r in rs)
    print(f"| {n} × {rs[0]['threads']} | {ms:.0f} | {statistics.median(r['tokens_per_s'] for r in rs):.0f} | {one / ms:.2f}× | {len(rs)} |")
PY
