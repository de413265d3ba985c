#!/usr/bin/env bash
# Side-by-side all-reduce bus-bandwidth benchmark on loopback: rankforge's own collective
# (`rankforge-launch ... -- bench collective`) vs PyTorch's gloo backend (bench/gloo_allreduce.py
# under torchrun), N local ranks each, float32 SUM all-reduce at each message size. Rounds
# alternate rankforge/gloo so machine noise hits both alike; per size the reported time is the
# median over rounds of each impl's (median-over-iterations, max-over-ranks) time, and
# busbw = bytes/time * 2(N-1)/N (nccl-tests convention). Raw JSON lines are kept in
# bench/results/collective-<date>.jsonl; a Markdown table is printed on stdout.
#
#   bench/bench_collective.sh                      # N=2, sizes 1M..256M, 20 iters, 3 rounds
#   N=4 ROUNDS=5 SIZES=4M,64M bench/bench_collective.sh   # knobs: N, SIZES, ITERS, WARMUP, ROUNDS
#   bench/bench_collective.sh --table bench/results/collective-XXXX.jsonl   # re-print a table only
#
# Needs release binaries (target/release/rankforge and rankforge-launch: cargo build --release
# --workspace) and the .venv with torch (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

table() {
  "$PY" - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if not rows:
    sys.exit(f"no results in {sys.argv[1]}")
times = {}  # (bytes, world) -> impl -> [time_ms per round]
for r in rows:
    times.setdefault((r["bytes"], r["world"]), {}).setdefault(r["impl"], []).append(r["time_ms"])
def human(b):
    for unit, m in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= m and b % m == 0:
            return f"{b // m} {unit}"
    return f"{b} B"
def busbw(b, n, ts):  # GB/s from the median time over rounds, or None if that impl has no runs
    if not ts:
        return None
    return b / (statistics.median(ts) / 1e3) / 1e9 * 2 * (n - 1) / n
fmt = lambda x: "—" if x is None else f"{x:.3f}"
worlds = sorted({w for _, w in times})
iters = sorted({r["iters"] for r in rows})
rounds = max(len(ts) for d in times.values() for ts in d.values())
print(f"results: {sys.argv[1]}  (world={','.join(map(str, worlds))}, iters={','.join(map(str, iters))}, rounds={rounds})")
print()
print("| size | rankforge busbw GB/s | gloo busbw GB/s | ratio |")
print("|---|---|---|---|")
for (b, n), d in sorted(times.items()):
    rf, gl = busbw(b, n, d.get("rankforge")), busbw(b, n, d.get("gloo"))
    ratio = f"{rf / gl:.2f}×" if rf is not None and gl is not None else "—"
    size = human(b) if len(worlds) == 1 else f"{human(b)} (N={n})"
    print(f"| {size} | {fmt(rf)} | {fmt(gl)} | {ratio} |")
PY
}

if [[ "${1:-}" == "--table" ]]; then
  table "${2:?usage: $0 --table FILE.jsonl}"
  exit 0
fi

N=${N:-2} SIZES=${SIZES:-1M,4M,16M,64M,256M} ITERS=${ITERS:-20} WARMUP=${WARMUP:-3} ROUNDS=${ROUNDS:-3}
for b in target/release/rankforge target/release/rankforge-launch; do
  [[ -x $b ]] || { echo "missing $b: run cargo build --release --workspace first" >&2; exit 1; }
done
out=bench/results/collective-$(date +%Y%m%d-%H%M%S).jsonl
log=$(mktemp)
trap 'rm -f "$log"; [[ -s $out ]] || rm -f "$out"' EXIT  # no empty results files on failure
mkdir -p bench/results
RF=(target/release/rankforge-launch --nproc-per-node "$N" --coordinator 127.0.0.1:0
    -- bench collective --bytes "$SIZES" --iters "$ITERS" --warmup "$WARMUP")
GL=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$N"
    bench/gloo_allreduce.py --bytes "$SIZES" --iters "$ITERS" --warmup "$WARMUP")

# run NAME CMD...: run CMD with stdout+stderr to $log; append its JSON result lines (rank 0's,
# "[rank 0] " prefix stripped) to $out. On failure, or if it printed no JSON, show the log and stop.
run() {
  local name=$1; shift
  if ! "$@" > "$log" 2>&1; then
    echo "$name failed; its output:" >&2; cat "$log" >&2; exit 1
  fi
  if ! sed -n -E 's/^(\[rank 0\] )?(\{.*"impl".*\})[[:space:]]*$/\2/p' "$log" | grep . >> "$out"; then
    echo "$name printed no JSON results; its output:" >&2; cat "$log" >&2; exit 1
  fi
}

for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS (N=$N)" >&2
  run rankforge "${RF[@]}"
  run gloo "${GL[@]}"
done
table "$out"
