#!/usr/bin/env bash
# Data-parallel step time on CPU: the seed GPT (6L/6H/384d, T=256, V=30000, batch 8) trained by
# 1 rank with THREADS threads vs 2 ranks with THREADS/2 threads each (same total threads), both
# under rankforge-launch with the same step function as `rankforge train` (`rankforge bench`).
# 2 ranks run with the gradient all-reduce overlapped with backward (the default) and, unless
# OFF=0, after backward (train.overlap_grad_reduce=false). Rounds alternate, each starting with the
# next configuration; prints medians over
# rounds of each configuration's median step time, all-reduce time, its exposed part (after
# backward) and the fraction hidden behind backward (docs/data_parallel.md), and the load average.
#
#   bench/bench_dp.sh    # knobs: ROUNDS (3), THREADS (nproc), STEPS (10), WARMUP (3), OFF (1), BUCKET_MB (25)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-$(nproc)} STEPS=${STEPS:-10} WARMUP=${WARMUP:-3} OFF=${OFF:-1} BUCKET_MB=${BUCKET_MB:-25}
out=bench/results/dp-$(date +%Y%m%d-%H%M%S).jsonl
mkdir -p bench/results
run() { # ranks threads_per_rank overlap
  target/release/rankforge-launch --nproc-per-node "$1" -- bench --config configs/gpt_small_pretrain.toml \
    --steps "$STEPS" --warmup "$WARMUP" --set model.vocab_size=30000 --set model.dropout=0.0 \
    --set train.device=cpu --set train.global_batch_size=8 --set train.micro_batch_size=8 \
    --set train.threads="$2" --set train.overlap_grad_reduce="$3" --set train.bucket_cap_mb="$BUCKET_MB" \
    2>/dev/null | grep '"impl"' | sed 's/^\[rank 0\] //' >> "$out"
}
half=$((THREADS / 2 > 0 ? THREADS / 2 : 1))
configs=("1 $THREADS true" "2 $half true")
if [ "$OFF" = 1 ]; then configs+=("2 $half false"); fi
n=${#configs[@]}
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  # Each round starts with the next configuration, so none always runs first or last.
  for k in $(seq 0 $((n - 1))); do
    # shellcheck disable=SC2086 # a configuration is three words
    run ${configs[$(((r - 1 + k) % n))]}
  done
done
.venv/bin/python - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows: by.setdefault((r["ranks"], r["overlap_grad_reduce"]), []).append(r)
one = statistics.median(r["step_ms"] for r in by[(1, True)])
med = lambda rs, k: statistics.median(r[k] for r in rs)
print(f"results: {sys.argv[1]}  (params={rows[0]['params']}, batch={rows[0]['batch']}, T={rows[0]['block_size']}, "
      f"bucket_cap_mb={rows[0]['bucket_cap_mb']}; load average now: {open('/proc/loadavg').read().split()[0]})")
print("| ranks × threads | all-reduce | median step ms | tokens/s | vs 1 rank | all-reduce ms | exposed ms | hidden | runs |")
print("|---|---|---|---|---|---|---|---|---|")
for (n, ov), rs in sorted(by.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
    ms = med(rs, "step_ms")
    mode = "—" if n == 1 else ("overlapped" if ov else "after backward")
    ar, ex = med(rs, "allreduce_ms"), med(rs, "exposed_allreduce_ms")
    hidden = "—" if n == 1 else f"{100 * max(0.0, 1 - ex / ar) if ar > 0 else 0:.0f} %"
    print(f"| {n} × {rs[0]['threads']} | {mode} | {ms:.0f} | {med(rs, 'tokens_per_s'):.0f} | {one / ms:.2f}× | {ar:.0f} | {ex:.0f} | {hidden} | {len(rs)} |")
PY
