"""Time from a rank's death to training resumed, under rankforge-launch (tiny model, loopback).

Each round starts a 2-rank CPU job (configs/gpt_tiny_pretrain_cpu.toml, checkpoint every 10
steps, --max-restarts 1), waits until it has trained 40 steps, kills rank 1 with SIGKILL, and
measures until the restarted job writes its first new step row to metrics.jsonl (the resumed
step after the checkpoint). That span covers failure detection, the coordinator's decision,
teardown of the surviving rank, re-rendezvous, process start (libtorch load), checkpoint load
and broadcast, and one training step. Prints one JSON line per round and the median.

--mode node: an elastic job instead (two launchers, `--nnodes 1:2`, one rank each, on
loopback); node 1's launcher is killed with SIGKILL (its rank dies with it) and the span runs
until node 0 alone (world 1) writes its first new step.

--mode frozen: rank 1 is frozen with SIGSTOP instead of killed; the job runs with
`--heartbeat-timeout 2` and the default 30 s grace period, so the span is detection (2 s of
missed heartbeats) plus the restart: a rank declared dead is SIGKILLed at once, the grace period
is not waited out.

    .venv/bin/python bench/recovery.py [--rounds 5] [--mode rank|node|frozen]
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


def launcher(run, extra):
    grace = [] if "--heartbeat-timeout" in extra else ["--grace-period", "2"]
    return [os.path.join(ROOT, "target/release/rankforge-launch"), *extra, *grace,
            "--config", os.path.join(ROOT, "configs/gpt_tiny_pretrain_cpu.toml"),
            "--set", f"run.dir={run!r}".replace("'", '"'), "--set", "train.max_steps=100000",
            "--set", "checkpoint.every_steps=10", "--set", "eval.every_steps=0"]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_round(tmp, mode):
    run = os.path.join(tmp, "run")
    if mode in ("rank", "frozen"):
        extra = ["--heartbeat-timeout", "2"] if mode == "frozen" else []
        procs = [subprocess.Popen(launcher(run, ["--nproc-per-node", "2", "--max-restarts", "1", *extra]), cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    else:
        coord = f"127.0.0.1:{free_port()}"
        env = dict(os.environ, RANKFORGE_JOB_TOKEN="recovery-bench-0123456789")
        procs = [subprocess.Popen(launcher(run, ["--nnodes", "1:2", "--node-rank", str(n), "--nproc-per-node", "1",
                                                 "--coordinator", coord]), cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in (0, 1)]
    metrics = os.path.join(run, "metrics.jsonl")
    while len(rows(metrics)) < 40:
        if any(p.poll() is not None for p in procs):
            sys.exit(f"a launcher exited before step 40 (see {run}/logs)")
        time.sleep(0.01)
    pid = procs[1].pid if mode == "node" else rank_pid(run, 1)
    killed_at_step = rows(metrics)[-1]["step"]
    ckpts = [int(d.split("_")[1]) for d in os.listdir(os.path.join(run, "checkpoints")) if d.startswith("step_")]
    resume_from = max(ckpts)
    inode = os.stat(metrics).st_ino
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP if mode == "frozen" else signal.SIGKILL)
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
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        p.wait()
    return {"impl": "rankforge", "mode": mode, "recovery_s": resumed, "killed_after_step": killed_at_step,
            "resumed_from_checkpoint": resume_from}


def ensure_tokenizer():
    """The tiny recipe's tokenizer (runs/tok-1k), trained once on the bundled corpus."""
    if not os.path.exists(os.path.join(ROOT, "runs/tok-1k/tokenizer.json")):
        subprocess.run([os.path.join(ROOT, "target/release/rankforge"), "tokenizer", "train", "--input", "data/kjv.txt",
                        "--vocab-size", "1000", "--kind", "bpe", "--output", "runs/tok-1k"], cwd=ROOT, check=True)


def main():
    ensure_tokenizer()
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", choices=["rank", "node", "frozen"], default="rank")
    args = ap.parse_args()
    times = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            r = one_round(tmp, args.mode)
        print(json.dumps(r), flush=True)
        if r["recovery_s"] is None:
            sys.exit("the job did not resume within 120 s")
        times.append(r["recovery_s"])
    print(json.dumps({"mode": args.mode, "median_recovery_s": statistics.median(times), "rounds": len(times)}))


if __name__ == "__main__":
    main()
