#!/usr/bin/env bash
# The GPU readiness check (issue 11): every GPU claim of rankforge in one run of at most
# 8 minutes on one H100/H200, printing one table. Run it from the bundle on the GPU host:
#
#   scripts/gpu_bundle.sh /tmp/rf           # on the build machine; copy /tmp/rf to the host
#   PATH=/opt/torch/.venv/bin:$PATH /tmp/rf/bench/gpu_check.sh
#
# or from a checkout after `cargo build --release --workspace --bins`. `DEVICE=cpu` runs the
# same steps on CPU at tiny sizes (~1–2 min on 2 cores; CI runs it so the script cannot rot).
# Each step runs under `timeout`, with its stdout in $OUT/logs/<step>.out and its stderr in
# $OUT/logs/<step>.log; the table also goes to $OUT/table.md and $OUT/summary.json. Exit 0 when
# every check passed, 1 otherwise.
#
# Knobs: DEVICE (cuda|cpu), BUDGET (seconds; later steps are skipped, default 460 on CUDA), OUT (default runs/gpu_check-<time> under the bundle/checkout),
# PY (a python with torch; default .venv/bin/python, /opt/torch/.venv/bin/python, python3),
# STEPS / WARMUP (timed / untimed bench steps), PEAK_TFLOPS (bf16 dense peak for MFU; default
# from the GPU's name: H100/H200 SXM 989, H100 PCIe 756, A100 312).
#
# Steps:
#   env      GPU, driver, torch, NCCL (as rankforge loads it, and as torch reports it)
#   seed-*   the seed GPT (6L/6H/384d, T=256), fp32 and bf16: rankforge vs bench/pytorch_gpt.py
#   gpt2-*   GPT-2 124 M (12L/12H/768d, T=1024, V=50304), same
#   nccl     all-reduce under rankforge-launch (world 1 NCCL on a GPU; 2 CPU ranks on CPU)
#   launched the bf16 seed bench again under the launcher: losses equal to the bare run
#   ddp-pt   PyTorch DDP + AdamW(fused=True) on the same model under the launcher: the step ratio
#   lora     LoRA fine-tuning of a bf16 Llama base (train: SFT data, eval, adapter + merged export)
#   full     full fine-tuning of the same base with bf16 weights (fp32 master weights, bench)
#   resume   20 steps with checkpoints, eval and export; then 10 → 20 from the step-10 checkpoint
#   generate greedy generation from the resumed model on the device and on the CPU: same ids
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
DEVICE=${DEVICE:-cuda}
case $DEVICE in cuda | cpu) ;; *) echo "error: DEVICE=$DEVICE: expected cuda or cpu" >&2; exit 2 ;; esac
if [ -x "$root/rankforge" ] && [ -d "$root/bin" ]; then
  RF=$root/rankforge RL=$root/rankforge-launch # the bundle's wrappers
else
  RF=$root/target/release/rankforge RL=$root/target/release/rankforge-launch
fi
if [ -z "${PY:-}" ]; then
  for c in "$root/.venv/bin/python" /opt/torch/.venv/bin/python python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import torch' 2>/dev/null; then PY=$c; break; fi
  done
fi
[ -n "${PY:-}" ] || { echo "error: no python with torch (set PY)" >&2; exit 2; }
export RANKFORGE_PYTHON=$PY
OUT=${OUT:-$root/runs/gpu_check-$(date +%Y%m%d-%H%M%S)}
LOGS=$OUT/logs
mkdir -p "$LOGS"
export RANKFORGE_CACHE=$OUT/cache RANKFORGE_LOG=${RANKFORGE_LOG:-info}
: > "$OUT/steps.tsv"

if [ "$DEVICE" = cuda ]; then
  STEPS=${STEPS:-10} WARMUP=${WARMUP:-3}
  SEED=(6 6 384 256 30000 32)    # layers heads dims block vocab batch
  GPT2=(12 12 768 1024 50304 16)
  VOCAB=8192 TEXT_BYTES=4200000
  LLAMA=(2048 12 16 8 5632)      # hidden layers heads kv-heads intermediate (~0.6 B)
  FT_LEN=512 FT_BATCH=8 FT_STEPS=5
  RESUME_SET=(--set model.n_layer=6 --set model.n_head=6 --set model.n_embd=384 --set model.block_size=256
    --set train.global_batch_size=32 --set train.micro_batch_size=16 --set model.dropout=0.1)
  TO=(120 240 600)               # timeouts: short, long, tokenizer/model setup
  BUDGET=${BUDGET:-460}          # seconds after which remaining steps are skipped (8 min in all)
else
  STEPS=${STEPS:-3} WARMUP=${WARMUP:-1}
  SEED=(2 2 64 64 1024 4)
  GPT2=(2 4 128 128 2048 2)
  VOCAB=1024 TEXT_BYTES=400000
  LLAMA=(64 2 4 2 128)
  FT_LEN=64 FT_BATCH=4 FT_STEPS=3
  RESUME_SET=(--set train.threads=2)
  TO=(120 180 300)
  BUDGET=${BUDGET:-600}
fi

# run NAME TIMEOUT CMD...: one step, logged, its status and seconds recorded; on CUDA the
# peak GPU memory (nvidia-smi, sampled every 200 ms) of the step is recorded too.
run() {
  local name=$1 limit=$2
  shift 2
  local sampler="" t0 t1 rc
  if [ "$SECONDS" -ge "$BUDGET" ]; then # the whole check stays within its time budget
    echo "skipped: the check's ${BUDGET}s budget was spent" > "$LOGS/$name.log"
    printf '%s\t%s\t%s\n' "$name" 125 0 >> "$OUT/steps.tsv"
    echo "  $name skipped (over the ${BUDGET}s budget)" >&2
    return 125
  fi
  if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$(echo "${CUDA_VISIBLE_DEVICES:-0}" | cut -d, -f1)" -lms 200 > "$LOGS/$name.mem" 2>/dev/null &
    sampler=$!
  fi
  echo "[$(date +%T)] $name: $*" >&2
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.out" 2> "$LOGS/$name.log"
  rc=$?
  t1=$(date +%s%N)
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null
  [ $rc -eq 124 ] && echo "timed out after ${limit}s" >> "$LOGS/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN { printf \"%.2f\", ($t1 - $t0) / 1e9 }")" >> "$OUT/steps.tsv"
  [ $rc -ne 0 ] && echo "  $name failed (exit $rc): $(tail -n 2 "$LOGS/$name.log" | tr '\n' ' ')" >&2
  return $rc
}

# --- environment ------------------------------------------------------------------------
run env "${TO[0]}" "$PY" - "$DEVICE" <<'PY'
import json, platform, sys, torch
out = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version()}
if sys.argv[1] == "cuda":
    p = torch.cuda.get_device_properties(0)
    out.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), gpus=torch.cuda.device_count(),
               nccl_torch=".".join(map(str, torch.cuda.nccl.version())))
else:
    name = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    out.update(gpu=None, cpu=name, threads=torch.get_num_threads())
    try:
        out["nccl_torch"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as e:
        out["nccl_torch"] = None
print(json.dumps(out))
PY
"$RF" --version > "$LOGS/version.out" 2>&1

# --- training steps vs PyTorch ----------------------------------------------------------
bench_pair() { # NAME layers heads dims block vocab batch
  local name=$1 L=$2 H=$3 C=$4 T=$5 V=$6 B=$7 dt
  for dt in fp32 bf16; do
    run "$name-$dt-rf" "${TO[1]}" "$RF" bench --config configs/gpt_small_pretrain.toml --steps "$STEPS" --warmup "$WARMUP" \
      --set model.n_layer="$L" --set model.n_head="$H" --set model.n_embd="$C" --set model.block_size="$T" \
      --set model.vocab_size="$V" --set model.dropout=0.0 --set train.device="$DEVICE" --set train.precision="$dt" \
      --set train.global_batch_size="$B" --set train.micro_batch_size="$B"
    run "$name-$dt-pt" "${TO[1]}" "$PY" bench/pytorch_gpt.py --n-layer "$L" --n-head "$H" --n-embd "$C" --block-size "$T" \
      --vocab-size "$V" --dropout 0.0 --batch "$B" --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" --dtype "$dt"
  done
}
bench_pair seed "${SEED[@]}"
bench_pair gpt2 "${GPT2[@]}"

# --- collectives and the launcher -------------------------------------------------------
if [ "$DEVICE" = cuda ]; then
  run nccl "${TO[0]}" "$RL" --nproc-per-node 1 -- bench collective --bytes 1M,64M,256M --iters 10 --device cuda
else
  run nccl "${TO[0]}" "$RL" --nproc-per-node 2 -- bench collective --bytes 64K,1M --iters 5 --device cpu
fi
L=${SEED[0]} H=${SEED[1]} C=${SEED[2]} T=${SEED[3]} V=${SEED[4]} B=${SEED[5]}
run launched "${TO[1]}" "$RL" --nproc-per-node 1 -- bench --config "$root/configs/gpt_small_pretrain.toml" --steps "$STEPS" --warmup "$WARMUP" \
  --set model.n_layer="$L" --set model.n_head="$H" --set model.n_embd="$C" --set model.block_size="$T" \
  --set model.vocab_size="$V" --set model.dropout=0.0 --set train.device="$DEVICE" --set train.precision=bf16 \
  --set train.global_batch_size="$B" --set train.micro_batch_size="$B"
# PyTorch's data-parallel step on the same model: DDP (NCCL on the GPU, gloo on CPU) + AdamW(fused=True), bf16
run ddp-pt "${TO[1]}" "$RL" --nproc-per-node 1 --python "$PY" -- "$root/bench/pytorch_gpt.py" --ddp --fused --dtype bf16 \
  --n-layer "$L" --n-head "$H" --n-embd "$C" --block-size "$T" --vocab-size "$V" --dropout 0.0 --batch "$B" \
  --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE"

# --- a tokenizer and a random bf16 Llama base (torch only: no transformers on the host) --
head -c "$TEXT_BYTES" data/kjv.txt > "$OUT/text.txt"
run tokenizer "${TO[2]}" "$RF" tokenizer train --input "$OUT/text.txt" --vocab-size "$VOCAB" --kind bpe --output "$OUT/tok"
run make-llama "${TO[2]}" "$PY" - "$OUT/llama" "$VOCAB" "${LLAMA[@]}" <<'PY'
import ctypes, json, os, shutil, struct, sys, torch
out, vocab, hidden, layers, heads, kv, inter = sys.argv[1], *map(int, sys.argv[2:])
torch.manual_seed(0)
os.makedirs(out, exist_ok=True)
hd = hidden // heads
shapes = {"model.embed_tokens.weight": [vocab, hidden], "model.norm.weight": [hidden], "lm_head.weight": [vocab, hidden]}
for i in range(layers):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": [hidden], p + "post_attention_layernorm.weight": [hidden],
                   p + "self_attn.q_proj.weight": [heads * hd, hidden], p + "self_attn.k_proj.weight": [kv * hd, hidden],
                   p + "self_attn.v_proj.weight": [kv * hd, hidden], p + "self_attn.o_proj.weight": [hidden, heads * hd],
                   p + "mlp.gate_proj.weight": [inter, hidden], p + "mlp.up_proj.weight": [inter, hidden],
                   p + "mlp.down_proj.weight": [hidden, inter]})
header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
for name in sorted(shapes):
    s = shapes[name]
    t = torch.ones(s) if name.endswith("norm.weight") else torch.randn(s) * 0.02
    t = t.to(torch.bfloat16).contiguous()
    b = ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())  # no numpy needed
    header[name] = {"dtype": "BF16", "shape": s, "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for b in blobs:
        f.write(b)
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "hidden_act": "silu", "initializer_range": 0.02, "attention_bias": False,
           "mlp_bias": False, "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "bfloat16"},
          open(os.path.join(out, "config.json"), "w"), indent=2)
tok = os.path.join(os.path.dirname(out), "tok")
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(tok, f), out)
print(json.dumps({"params": sum(torch.Size(s).numel() for s in shapes.values())}))
PY

# --- fine-tuning: LoRA (the real SFT path) and full fine-tuning with bf16 weights -------
cat > "$OUT/ft.toml" <<EOF
[run]
dir = "$OUT/lora"
[model]
kind = "hf"
path = "$OUT/llama"
dtype = "bf16"
[data]
train = "$root/data/kjv_sft.jsonl"
format = "prompt_completion"
val_fraction = 0.05
max_length = $FT_LEN
[train]
max_steps = $FT_STEPS
global_batch_size = $FT_BATCH
micro_batch_size = $((FT_BATCH / 2))
lr = 5e-4
warmup_steps = 1
weight_decay = 0.0
seed = 1234
device = "$DEVICE"
precision = "bf16"
log_every = 1
[lora]
r = 16
alpha = 32
target_modules = "all-linear"
[checkpoint]
every_steps = 0
keep_last = 1
[eval]
every_steps = 0
max_batches = 2
samples = 1
sample_tokens = 16
EOF
run lora "${TO[1]}" "$RF" train --config "$OUT/ft.toml"
sed -e '/^\[lora\]/,/^target_modules/d' "$OUT/ft.toml" > "$OUT/full.toml"
run full "${TO[1]}" "$RF" bench --config "$OUT/full.toml" --steps "$FT_STEPS" --warmup 1

# --- 20 steps with checkpoints, eval and export; then an exact resume from step 10 --------
RES=(--config configs/gpt_tiny_pretrain_cpu.toml --set data.train="$OUT/text.txt" --set data.tokenizer="$OUT/tok"
  --set train.max_steps=20 --set train.lr_decay_steps=20 --set checkpoint.every_steps=10 --set checkpoint.keep_last=2
  --set eval.every_steps=10 --set train.device="$DEVICE" "${RESUME_SET[@]}")
run resume-a "${TO[1]}" "$RF" train "${RES[@]}" --set run.dir="$OUT/resume_a"
rm -rf "$OUT/resume_b" && cp -r "$OUT/resume_a" "$OUT/resume_b" && rm -rf "$OUT/resume_b/final" "$OUT/resume_b/checkpoints/step_00000020"
run resume-b "${TO[1]}" "$RF" train "${RES[@]}" --set run.dir="$OUT/resume_b"

# --- greedy generation: the device and the CPU agree --------------------------------------
for d in $(printf '%s\n' "$DEVICE" cpu | sort -u); do # (once in CPU mode)
  run "generate-$d" "${TO[0]}" "$RF" generate --model "$OUT/resume_a/final" --prompt "And God said" --max-new-tokens 32 \
    --temperature 0 --json --device "$d"
done

# --- the table ---------------------------------------------------------------------------
"$PY" - "$OUT" "$DEVICE" "${PEAK_TFLOPS:-}" <<'PY'
import hashlib, json, os, sys
out, device, peak_arg = sys.argv[1], sys.argv[2], sys.argv[3]
logs = os.path.join(out, "logs")
steps = {}
for line in open(os.path.join(out, "steps.tsv")):
    name, rc, secs = line.rstrip("\n").split("\t")
    steps[name] = (int(rc), float(secs))

def jsons(name):
    """The JSON objects a step printed (a launched rank's lines carry a `[rank N]` prefix)."""
    rows = []
    try:
        for l in open(os.path.join(logs, name + ".out")):
            if "{" in l:
                try:
                    rows.append(json.loads(l[l.index("{"):]))
                except ValueError:
                    pass
    except OSError:
        pass
    return rows

def one(name):
    r = jsons(name)
    return r[-1] if r else {}

def peak_mem(*names):
    vals = []
    for n in names:
        try:
            vals += [float(x) for x in open(os.path.join(logs, n + ".mem")).read().split() if x.strip()]
        except OSError:
            pass
    return f"{max(vals):.0f}" if vals else "-"

def secs(*names):
    return f"{sum(steps.get(n, (0, 0.0))[1] for n in names):.1f}"

def ran(*names):
    return all(steps.get(n, (1, 0))[0] == 0 for n in names)

rows, failed = [], []
def row(check, ok, result, names, mem=None):
    status = "ok" if ok is True else ("warn" if ok == "warn" else "FAIL")
    if status == "FAIL":
        failed.append(check)
    rows.append({"check": check, "status": status, "result": result, "seconds": secs(*names),
                 "peak_gpu_mib": mem if mem is not None else peak_mem(*names), "logs": ", ".join(n + ".log" for n in names)})

env = one("env")
gpu = env.get("gpu") or f"CPU: {env.get('cpu')}"
version = open(os.path.join(logs, "version.out")).read().strip()
nccl_rf = one("nccl").get("nccl")
bf16 = one("seed-bf16-rf")
row("environment", ran("env") and bool(env), f"{gpu}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}); NCCL: rankforge loads "
    f"{nccl_rf or '- (no NCCL on CPU)'}, torch reports {env.get('nccl_torch')}; autocast dtype in bf16 steps: {bf16.get('autocast_dtype')}; {version}",
    ["env"], "-")
if device == "cuda":
    assert_ok = bf16.get("autocast_dtype") == "bfloat16"
    rows[-1]["status"] = "ok" if assert_ok and rows[-1]["status"] == "ok" else "FAIL"
    if rows[-1]["status"] == "FAIL" and "environment" not in failed:
        failed.append("environment")

name = (gpu or "").upper()
peak = float(peak_arg) * 1e12 if peak_arg else (989e12 if ("H100" in name and "PCIE" not in name) or "H200" in name
                                              else 756e12 if "H100" in name else 312e12 if "A100" in name else None)
tiny = "" if device == "cuda" else " (tiny on CPU)"
for model, cfg_name in (("seed", "seed GPT" + tiny), ("gpt2", "GPT-2 124M" + tiny)):
    for dt in ("fp32", "bf16"):
        rf, pt = one(f"{model}-{dt}-rf"), one(f"{model}-{dt}-pt")
        ok = ran(f"{model}-{dt}-rf", f"{model}-{dt}-pt") and "tokens_per_s" in rf and "tokens_per_s" in pt
        if not ok:
            row(f"{cfg_name} {dt} step", False, "did not run", [f"{model}-{dt}-rf", f"{model}-{dt}-pt"])
            continue
        ratio = rf["tokens_per_s"] / pt["tokens_per_s"]
        n, T = rf["params"], rf["block_size"]
        L, C = {"seed": (6, 384), "gpt2": (12, 768)}[model] if device == "cuda" else (None, None)
        mfu = "-"
        if device == "cuda" and dt == "bf16" and peak:
            flops_tok = 6 * n + 12 * L * C * T
            mfu = f"{100 * flops_tok * rf['tokens_per_s'] / peak:.1f}%"
        target = device == "cuda" and dt == "bf16" and model == "gpt2"
        status = True if not target or ratio >= 1.0 else "warn"
        row(f"{cfg_name} {dt} step", status, f"{rf['tokens_per_s']:.0f} tok/s vs PyTorch {pt['tokens_per_s']:.0f} = {ratio:.2f}×; "
            f"step {rf['step_ms']:.1f} ms; MFU {mfu}; loss {rf['losses'][0]:.3f}→{rf['losses'][-1]:.3f}",
            [f"{model}-{dt}-rf", f"{model}-{dt}-pt"])

coll = jsons("nccl")
ok = ran("nccl") and bool(coll) and (device != "cuda" or all(c.get("collective") == "nccl" for c in coll))
row("all-reduce under the launcher", ok, "; ".join(f"{c['bytes'] >> 10} KiB {c['collective']} world {c['world']}: {c['busbw_gbps']:.2f} GB/s bus"
                                                 for c in coll) or "did not run", ["nccl"])

bare, launched = bf16.get("losses"), one("launched").get("losses")
if ran("launched") and bare and launched:
    diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(bare, launched))
    same = bare == launched
    row("bench under the launcher", True if same else ("warn" if diff < 1e-4 else False),
        f"{len(launched)} losses {'equal to the bare run' if same else f'differ from the bare run by ≤ {diff:.2e} rel.'}; "
        f"collective {one('launched').get('collective')}; gradient all-reduce {one('launched').get('allreduce_ms', 0):.2f} ms, "
        f"{one('launched').get('exposed_allreduce_ms', 0):.2f} ms after backward, {100 * one('launched').get('overlap_fraction', 0):.0f} % hidden "
        f"(overlap_grad_reduce {one('launched').get('overlap_grad_reduce')})", ["launched"])
else:
    row("bench under the launcher", False, "did not run", ["launched"])

rf, ddp = one("launched"), one("ddp-pt")
if ran("launched", "ddp-pt") and "tokens_per_s" in rf and "tokens_per_s" in ddp:
    ratio = rf["tokens_per_s"] / ddp["tokens_per_s"]
    row("data-parallel step vs PyTorch DDP + fused AdamW (bf16, world 1)", True if device != "cuda" or ratio >= 1.0 else "warn",
        f"{rf['tokens_per_s']:.0f} tok/s ({rf.get('optimizer_impl', rf.get('optimizer'))}, overlap {100 * rf.get('overlap_fraction', 0):.0f} % hidden) "
        f"vs DDP {ddp['tokens_per_s']:.0f} tok/s ({ddp.get('optimizer')}) = {ratio:.2f}×", ["launched", "ddp-pt"])
else:
    row("data-parallel step vs PyTorch DDP + fused AdamW (bf16, world 1)", False, "did not run", ["launched", "ddp-pt"])

def metrics(run_dir):
    try:
        return [json.loads(l) for l in open(os.path.join(out, run_dir, "metrics.jsonl"))]
    except OSError:
        return []

lora = [m for m in metrics("lora") if "loss" in m]
ok = ran("make-llama", "lora") and lora and os.path.exists(os.path.join(out, "lora/final/adapter_model.safetensors")) \
    and os.path.exists(os.path.join(out, "lora/final/merged/model.safetensors"))
params = one("make-llama").get("params", 0)
row("LoRA on a bf16 Llama base", bool(ok), (f"{params / 1e6:.2f} M base; {len(lora)} steps, loss {lora[0]['loss']:.3f}→{lora[-1]['loss']:.3f}, "
    f"{lora[-1].get('tokens_per_s', 0):.0f} tok/s; adapter + merged exported") if ok else "did not finish", ["tokenizer", "make-llama", "lora"])
full = one("full")
ok = ran("full") and full.get("weights") == "bfloat16" and all(x == x and abs(x) < 1e4 for x in full.get("losses", [float("nan")]))
row("full fine-tuning, bf16 weights", ok, f"{full.get('tokens_per_s', 0):.0f} tok/s, step {full.get('step_ms', 0):.0f} ms, losses "
    + ", ".join(f"{x:.3f}" for x in full.get("losses", [])), ["full"])

def sha(p):
    try:
        return hashlib.sha256(open(p, "rb").read()).hexdigest()
    except OSError:
        return None
a, b = metrics("resume_a"), metrics("resume_b")
la = {m["step"]: m["loss"] for m in a if "loss" in m}
lb = {m["step"]: m["loss"] for m in b if "loss" in m}
evals = [m for m in a if "val_loss" in m]
wa, wb = sha(os.path.join(out, "resume_a/final/model.safetensors")), sha(os.path.join(out, "resume_b/final/model.safetensors"))
ok = ran("resume-a", "resume-b") and len(la) == 20 and wa is not None
same = ok and wa == wb and all(lb.get(s) == la[s] for s in range(11, 21))
row("20 steps, checkpoint, eval, export; resume", True if same else False,
    (f"2 checkpoints, {len(evals)} evals (val loss {evals[-1]['val_loss']:.3f}), final/ exported; resumed 10→20: "
     + ("losses and final weights bit-identical" if same else f"DIFFERENT (weights {'equal' if wa == wb else 'differ'})")) if ok else "did not finish",
    ["resume-a", "resume-b"])

g_dev, g_cpu = one(f"generate-{device}"), one("generate-cpu")
ok = ran(f"generate-{device}", "generate-cpu") and g_dev.get("ids") and g_dev.get("ids") == g_cpu.get("ids")
row("greedy generation, device vs CPU", bool(ok), f"{len(g_dev.get('ids') or [])} ids {'identical' if ok else 'DIFFER'}: {g_dev.get('text', '')[:60]!r}",
    [f"generate-{device}", "generate-cpu"])

lines = [f"GPU check ({device}), {out}", "", "| check | status | result | s | peak GPU MiB | logs |", "|---|---|---|---|---|---|"]
lines += [f"| {r['check']} | {r['status']} | {r['result']} | {r['seconds']} | {r['peak_gpu_mib']} | {r['logs']} |" for r in rows]
total = sum(s for _, s in steps.values())
lines += ["", f"total {total:.0f} s; {'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)}"]
text = "\n".join(lines)
print(text)
open(os.path.join(out, "table.md"), "w").write(text + "\n")
json.dump({"device": device, "rows": rows, "failed": failed, "total_s": total}, open(os.path.join(out, "summary.json"), "w"), indent=1)
sys.exit(1 if failed else 0)
PY
