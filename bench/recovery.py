"""Time from a rank's death to training resumed, under rankforge-launch (tiny model, loopback).

Each round starts a 2-rank CPU job (configs/gpt_tiny_pretrain_cpu.toml, checkpoint every 10
steps, --max-restarts 1), waits until it has trained 40 steps, kills rank 1 with SIGKILL, and
measures until the restarted job writes its first new step row to metrics.jsonl (the resumed
step after the checkpoint). That span covers failure detection, the coordinator's decision,
teardown of the surviving rank, re-rendezvous, process start (libtorch load), checkpoint load
and broadcast, and one training step. Prints one JSON line per round and the median.

    .venv/bin/python bench/recovery.py [--rounds 5]
"""
import argparse, json, os, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if '"loss"' in l]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def rank_pid(tag, rank):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if tag.encode() in cmd and b" train".strip() in cmd.split(b"\0") and f"RANK={rank}".encode() in env:
            return int(pid)
    return None


def one_round(tmp):
    run = os.path.join(tmp, "run")
    cmd = [os.path.join(ROOT, "target/release/rankforge-launch"), "--nproc-per-node", "2", "--max-restarts", "1",
           "--grace-period", "2", "--config", os.path.join(ROOT, "configs/gpt_tiny_pretrain_cpu.toml"),
           "--set", f"run.dir={run!r}".replace("'", '"'), "--set", "train.max_steps=100000",
           "--set", "checkpoint.every_steps=10", "--set", "eval.every_steps=0"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = os.path.join(run, "metrics.jsonl")
    while len(rows(metrics)) < 40:
        time.sleep(0.01)
    pid = rank_pid(run, 1)
    killed_at_step = rows(metrics)[-1]["step"]
    ckpts = [int(d.split("_")[1]) for d in os.listdir(os.path.join(run, "checkpoints")) if d.startswith("step_")]
    resume_from = max(ckpts)
    inode = os.stat(metrics).st_ino
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # The restarted job rewrites metrics.jsonl (a new file: rows past its checkpoint dropped),
    # then appends: resumed = the new file has a step beyond the checkpoint.
    resumed = None
    while time.monotonic() - t0 < 120:
        try:
            new_file = os.stat(metrics).st_ino != inode
        except FileNotFoundError:
            new_file = False
        r = rows(metrics) if new_file else []
        if r and r[-1]["step"] > resume_from:
            resumed = time.monotonic() - t0
            break
        time.sleep(0.002)
    p.send_signal(signal.SIGINT)
    p.wait()
    return {"impl": "rankforge", "recovery_s": resumed, "killed_after_step": killed_at_step,
            "resumed_from_checkpoint": resume_from}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    times = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            r = one_round(tmp)
        print(json.dumps(r), flush=True)
        if r["recovery_s"] is None:
            sys.exit("the job did not resume within 120 s")
        times.append(r["recovery_s"])
    print(json.dumps({"median_recovery_s": statistics.median(times), "rounds": len(times)}))


if __name__ == "__main__":
    main()
