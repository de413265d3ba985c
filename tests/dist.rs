//! Data parallelism through `rankforge-launch`: 1, 2 and 3 CPU ranks train identically; two
//! simulated nodes equal one node; the launcher's failure paths leave no process behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::procs::processes_with;

fn launcher_bin() -> PathBuf {
    let p = bin().with_file_name("rankforge-launch");
    assert!(p.exists(), "{} is missing: build the workspace (scripts/setup.sh does)", p.display());
    p
}

fn launch(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(launcher_bin());
    c.args(args).env("RANKFORGE_LOG", "warn").env_remove("RANKFORGE_JOB_TOKEN").envs(envs.iter().copied());
    c
}

fn check(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed ({:?}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// The tiny recipe for run directory `run` (30 steps, checkpoint at 20 and 30).
fn recipe(dir: &Path, run: &Path) -> PathBuf {
    let f = fixture();
    tiny_recipe(dir, &f.corpus, &f.tokenizer, run)
}

const STEPS: &str = "train.max_steps=30";

fn weights(run: &Path) -> Vec<(String, tch::Tensor)> {
    rankforge::st::load(&run.join("final/model.safetensors")).unwrap()
}

/// Max relative loss difference and max absolute weight difference between two runs.
fn compare(a: &Path, b: &Path) -> (f64, f64) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), lb.len(), "{} vs {}", a.display(), b.display());
    let loss_rel = la.iter().zip(&lb).map(|(x, y)| ((x - y) / x).abs()).fold(0.0, f64::max);
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    let w = wa
        .iter()
        .zip(&wb)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max);
    (loss_rel, w)
}


fn assert_no_orphans(needle: &Path) {
    let needle = needle.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_with(&needle);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One of `--nnodes 2` launchers (one rank each) meeting at `coord`, output captured.
fn node_launcher(coord: &str, node_rank: &str, recipe: &Path, set: &str, token: &str) -> std::process::Child {
    let args = ["--nnodes", "2", "--node-rank", node_rank, "--nproc-per-node", "1", "--coordinator", coord];
    launch(&args, &[("RANKFORGE_JOB_TOKEN", token)])
        .args(["--config", recipe.to_str().unwrap(), "--set", set])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn one_two_and_three_ranks_train_identically() {
    let dir = scratch("dp-equivalence");
    let plain = dir.join("plain");
    ok(&["train", "--config", recipe(&dir, &plain).to_str().unwrap(), "--set", STEPS]);
    let mut runs = Vec::new();
    for n in ["1", "2", "3"] {
        let run = dir.join(format!("ranks{n}"));
        let r = recipe(&dir, &run);
        let out = launch(&["--nproc-per-node", n, "--config", r.to_str().unwrap(), "--set", STEPS], &[]).output().unwrap();
        check(&out, &format!("{n} ranks"));
        runs.push(run);
    }
    // Without the launcher, a world of one: bit for bit the launcher's one-rank run.
    let (l, w) = compare(&plain, &runs[0]);
    assert_eq!((l, w), (0.0, 0.0), "plain `rankforge train` vs one launched rank");
    for run in &runs[1..] {
        let (l, w) = compare(&runs[0], run);
        assert!(l <= 1e-5 && w <= 1e-5, "{}: loss rel diff {l:e}, weight max abs diff {w:e}", run.display());
    }
    // Rank 0 alone writes the run directory; every rank logs.
    let run3 = &runs[2];
    assert_eq!(losses(run3).len(), 30);
    for r in 0..3 {
        assert!(run3.join(format!("logs/rank{r}.log")).exists(), "rank {r} log");
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run3.join("checkpoints/step_00000030/train_state.json")).unwrap()).unwrap();
    assert_eq!(state["world_size"], 3);
    assert_eq!(state["samples"], 30 * 8);
    assert_no_orphans(&dir);
}

#[test]
fn two_simulated_nodes_equal_one_node_with_two_ranks() {
    let dir = scratch("dp-two-nodes");
    let one = dir.join("one-node");
    let r = recipe(&dir, &one);
    check(&launch(&["--nproc-per-node", "2", "--config", r.to_str().unwrap(), "--set", STEPS], &[]).output().unwrap(), "one node");

    let two = dir.join("two-nodes");
    let r = recipe(&dir, &two);
    let coord = format!("127.0.0.1:{}", free_port());
    // Node 1 first: it waits for node 0's coordinator.
    let n1 = node_launcher(&coord, "1", &r, STEPS, "test-secret-0123456789");
    std::thread::sleep(Duration::from_millis(300));
    let n0 = node_launcher(&coord, "0", &r, STEPS, "test-secret-0123456789");
    let (o0, o1) = (n0.wait_with_output().unwrap(), n1.wait_with_output().unwrap());
    check(&o0, "node 0");
    check(&o1, "node 1");
    let (l, w) = compare(&one, &two);
    assert!(l <= 1e-5 && w <= 1e-5, "two nodes vs one: loss rel diff {l:e}, weight max abs diff {w:e}");
    assert_no_orphans(&dir);
}

#[test]
fn hostfile_starts_the_other_nodes_over_ssh() {
    let dir = scratch("dp-hostfile");
    let run = dir.join("run");
    let r = recipe(&dir, &run);
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "# two hosts, one rank each\n127.0.0.1 slots=1\nlocalhost slots=1\n").unwrap();
    // An "ssh" that runs the remote command here, as ssh would on the host.
    let ssh = dir.join("fake-ssh");
    std::fs::write(&ssh, "#!/bin/sh\necho \"$1\" >> \"$(dirname \"$0\")/ssh-hosts\"\nshift\nexec sh -c \"$*\"\n").unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = launch(&["--hostfile", hosts.to_str().unwrap(), "--config", r.to_str().unwrap(), "--set", "train.max_steps=10"], &[("RANKFORGE_SSH", ssh.to_str().unwrap())])
        .output()
        .unwrap();
    check(&out, "hostfile launch");
    assert_eq!(std::fs::read_to_string(dir.join("ssh-hosts")).unwrap(), "localhost\n", "node 1 started over ssh");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/step_00000010/train_state.json")).unwrap()).unwrap();
    assert_eq!(state["world_size"], 2);
    assert_no_orphans(&dir);
}

#[test]
fn different_recipes_on_two_nodes_are_refused() {
    let dir = scratch("dp-mismatch");
    let run = dir.join("run");
    let r = recipe(&dir, &run);
    let coord = format!("127.0.0.1:{}", free_port());
    let n0 = node_launcher(&coord, "0", &r, "train.lr=0.001", "mismatch-token");
    let n1 = node_launcher(&coord, "1", &r, "train.lr=0.002", "mismatch-token");
    let (o0, o1) = (n0.wait_with_output().unwrap(), n1.wait_with_output().unwrap());
    let e0 = String::from_utf8_lossy(&o0.stderr);
    assert!(!o0.status.success() && !o1.status.success(), "{e0}");
    assert_eq!(o0.status.code(), Some(2), "bad input, do not retry: {e0}");
    assert!(e0.contains("ranks were started with different recipes: rank 0 on"), "{e0}");
    assert!(e0.contains("same --config file contents and --set overrides"), "{e0}");
    assert!(!run.join("metrics.jsonl").exists(), "nothing was trained");
    // The rank wrote its own error.json (TORCHELASTIC_ERROR_FILE) with the exact message.
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("logs/rank0.error.json")).unwrap()).unwrap();
    assert!(e["message"]["message"].as_str().unwrap().starts_with("ranks were started with different recipes"), "{e}");
    assert_no_orphans(&dir);
}

#[test]
fn an_unreachable_coordinator_is_named_after_a_bounded_wait() {
    let dir = scratch("dp-unreachable");
    let r = recipe(&dir, &dir.join("run"));
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = launch(&["--nnodes", "2", "--node-rank", "1", "--coordinator", &addr, "--join-timeout", "2", "--config", r.to_str().unwrap()], &[("RANKFORGE_JOB_TOKEN", "x")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("cannot reach the coordinator at {addr} after 2 s")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_no_orphans(&dir);
}

#[test]
fn a_killed_rank_fails_the_job_and_stops_the_others() {
    let dir = scratch("dp-kill");
    let run = dir.join("run");
    let r = recipe(&dir, &run);
    let child = launch(&["--nproc-per-node", "2", "--grace-period", "5", "--config", r.to_str().unwrap(), "--set", "train.max_steps=100000"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training runs, then kill -9 rank 1.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.join("metrics.jsonl").exists() || std::fs::metadata(run.join("metrics.jsonl")).unwrap().len() == 0 {
        assert!(Instant::now() < deadline, "training never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rank1 = processes_with(&dir.display().to_string())
        .into_iter()
        .filter(|p| p.contains(" train "))
        .map(|p| p.split(':').next().unwrap().to_string())
        .find(|pid| std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == b"RANK=1")))
        .expect("rank 1 is running");
    unsafe { libc::kill(rank1.parse().unwrap(), libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 9), "{err}");
    assert!(err.contains("root cause: rank 1 on") && err.contains("killed by SIGKILL (signal 9)"), "{err}");
    // torchelastic's error.json, written by the launcher for a rank that died by a signal.
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("logs/rank1.error.json")).unwrap()).unwrap();
    assert_eq!(e["message"]["message"], format!("Signal 9 (SIGKILL) received by PID {rank1}"));
    assert!(e["message"]["extraInfo"]["timestamp"].as_str().unwrap().parse::<u64>().is_ok());
    assert_no_orphans(&dir);
}

#[test]
fn sigusr2_checkpoints_at_the_next_step_boundary_and_sigint_stops_the_job() {
    let dir = scratch("dp-commands");
    let run = dir.join("run");
    let r = recipe(&dir, &run);
    let child = launch(
        &["--nproc-per-node", "2", "--grace-period", "5", "--config", r.to_str().unwrap(), "--set", "train.max_steps=100000", "--set", "checkpoint.every_steps=0"],
        &[("RANKFORGE_LOG", "info")],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = child.id() as i32;
    let rows = |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&run) < 3 {
        assert!(Instant::now() < deadline, "training never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    // A checkpoint appears although checkpoint.every_steps = 0 (end of run only).
    let deadline = Instant::now() + Duration::from_secs(30);
    let ckpt = loop {
        if let Some((step, dir)) = rankforge::checkpoint::list(&run).unwrap().pop() {
            break (step, dir);
        }
        assert!(Instant::now() < deadline, "no checkpoint after SIGUSR2");
        std::thread::sleep(Duration::from_millis(50));
    };
    rankforge::checkpoint::verify(&ckpt.1).unwrap();
    assert!(ckpt.0 >= 3);
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("received SIGINT: stopping all ranks"), "{err}");
    assert!(err.contains("checkpoint requested through the coordinator"), "rank 0 logged the request: {err}");
    assert_no_orphans(&dir);
}

/// The pid of the running `rankforge train` rank `rank` started under `dir`.
fn rank_pid(dir: &Path, rank: usize) -> i32 {
    rank_pid_of(dir, rank, "train")
}

/// The pid of rank `rank` running `rankforge <command>` with `dir` in its command line.
pub(crate) fn rank_pid_of(dir: &Path, rank: usize, command: &str) -> i32 {
    processes_with(&dir.display().to_string())
        .into_iter()
        .filter(|p| p.contains(&format!(" {command} ")))
        .map(|p| p.split(':').next().unwrap().to_string())
        .find(|pid| {
            let want = format!("RANK={rank}");
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == want.as_bytes()))
        })
        .unwrap_or_else(|| panic!("rank {rank} is not running"))
        .parse()
        .unwrap()
}

const LONG: [&str; 4] = ["--set", "train.max_steps=200", "--set", "checkpoint.every_steps=25"];

/// A 2-rank 200-step run, uninterrupted, for the restart tests to match (run once, shared).
fn reference_run(_dir: &Path) -> PathBuf {
    static REFERENCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    REFERENCE
        .get_or_init(|| {
            let dir = scratch("ft-reference");
            let run = dir.join("reference");
            let r = recipe(&dir, &run);
            let mut args = vec!["--nproc-per-node", "2", "--config", r.to_str().unwrap()];
            args.extend(LONG);
            check(&launch(&args, &[]).output().unwrap(), "reference run");
            run
        })
        .clone()
}

/// Starts a 2-rank 200-step run that may restart once; `extra` launcher flags first (a grace
/// period of 1 s unless they give one).
fn restartable_run(dir: &Path, extra: &[&str]) -> (PathBuf, std::process::Child) {
    let run = dir.join("restarted");
    let r = recipe(dir, &run);
    let mut args = vec!["--nproc-per-node", "2", "--max-restarts", "1"];
    if !extra.contains(&"--grace-period") {
        args.extend(["--grace-period", "1"]);
    }
    args.extend(extra);
    args.extend(["--config", r.to_str().unwrap()]);
    args.extend(LONG);
    let child = launch(&args, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    (run, child)
}

/// Runs the restartable job's command again: it resumes and ends exactly like the reference.
fn rerun_matches(dir: &Path, reference: &Path) {
    let (run, child) = restartable_run(dir, &[]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(compare(reference, &run), (0.0, 0.0));
    assert_no_orphans(dir);
}

#[test]
fn a_killed_rank_restarts_the_job_from_its_checkpoint_and_the_result_is_unchanged() {
    let dir = scratch("ft-kill-restart");
    let reference = reference_run(&dir);
    let (run, child) = restartable_run(&dir, &[]);
    wait_for_rows(&run, 60);
    unsafe { libc::kill(rank_pid(&dir, 1), libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("restart 1 of 1, root cause: rank 1 on") && err.contains("killed by SIGKILL"), "{err}");
    let (l, w) = compare(&reference, &run);
    assert_eq!((l, w), (0.0, 0.0), "a restarted run resumes exactly");
    let log = std::fs::read_to_string(run.join("logs/rank1.log")).unwrap();
    assert!(log.contains("generation 0, restart 0 ===") && log.contains("generation 1, restart 1 ==="), "logs are appended per generation");
    assert_no_orphans(&dir);
}

#[test]
fn a_stopped_rank_is_detected_by_missed_heartbeats_killed_at_once_and_restarted() {
    let dir = scratch("ft-sigstop");
    let reference = reference_run(&dir);
    // The default grace period: SIGTERM never reaches a stopped process, so waiting it out
    // after SIGTERM took ~31 s; a rank declared dead is SIGKILLed at once instead.
    let (run, mut child) = restartable_run(&dir, &["--heartbeat-timeout", "2", "--grace-period", "30"]);
    wait_for_rows(&run, 60);
    let stopped = Instant::now();
    let pid = rank_pid(&dir, 1);
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Recovered when the restarted generation's ranks start.
    let log = run.join("logs/rank0.log");
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("rank 0, generation 1, restart 1 ===") {
        if stopped.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("no restart within 60 s of the SIGSTOP");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let recovery = stopped.elapsed();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(recovery < Duration::from_secs(10), "restarted {recovery:?} after the SIGSTOP (heartbeat timeout 2 s, grace period 30 s)");
    assert!(err.contains("rank 1 on") && err.contains("stopped responding: no heartbeat for 2."), "{err}");
    assert!(err.contains(&format!("rank 1 (pid {pid}) sent no heartbeat: killing it at once (SIGKILL)")), "{err}");
    let (l, w) = compare(&reference, &run);
    assert_eq!((l, w), (0.0, 0.0), "a restarted run resumes exactly");
    assert_no_orphans(&dir);
}

/// utime + stime of process `pid` so far, in seconds (`man 5 proc`: fields 14 and 15).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name start at field 3 (the state).
    let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Waits up to `limit` for `child` to exit; `None` (and the child SIGKILLed) if it does not.
fn exits_within(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let since = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if since.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_launcher_waiting_for_other_nodes_sleeps_and_stops_at_once_on_sigterm_or_sigint() {
    let dir = scratch("dp-rendezvous-signal");
    let logs = dir.join("logs");
    // (node rank, signal, what it waits for): node 0 for node 1, which never comes; node 1 for a
    // coordinator that is not there. No rank ever starts, so the command is never run.
    for (node, sig, waiting) in [
        ("0", libc::SIGTERM, "waiting for the other nodes to join"),
        ("0", libc::SIGINT, "waiting for the other nodes to join"),
        ("1", libc::SIGTERM, "connecting to the coordinator"),
    ] {
        let coord = format!("127.0.0.1:{}", free_port());
        let args = ["--nnodes", "2", "--node-rank", node, "--nproc-per-node", "1", "--coordinator", &coord, "--log-dir", logs.to_str().unwrap()];
        let mut child = launch(&args, &[("RANKFORGE_JOB_TOKEN", "rendezvous-secret")])
            .args(["--", "train", "--config", "unused.toml"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Waiting costs no CPU: it sleeps until the state changes.
        let (mut used, mut listened) = (0.0, true);
        if node == "0" {
            let since = Instant::now();
            while std::net::TcpStream::connect(&coord).is_err() && since.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            listened = std::net::TcpStream::connect(&coord).is_ok();
            let cpu = cpu_seconds(pid);
            std::thread::sleep(Duration::from_secs(3));
            used = cpu_seconds(pid) - cpu;
        } else {
            std::thread::sleep(Duration::from_secs(1));
        }
        unsafe { libc::kill(pid as i32, sig) };
        // (The child is gone before any assertion can fail.)
        let status = exits_within(&mut child, Duration::from_secs(2));
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(listened, "node 0 never listened on {coord}: {err}");
        assert!(used < 0.5, "node {node}: {used:.2} s of CPU in 3 s of waiting for node 1: {err}");
        let status = status.unwrap_or_else(|| panic!("node {node} still ran 2 s after signal {sig}: {err}"));
        assert_eq!(status.code(), Some(128 + sig), "{err}");
        let name = if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
        assert!(err.contains(&format!("received {name} while {waiting}")) && err.contains("stopped (no rank was running)"), "{err}");
        // Nothing is left: the coordinator's port is closed, no process remains.
        assert!(std::net::TcpStream::connect(&coord).is_err(), "{coord} still accepts connections");
        assert_no_orphans(&dir);
    }
}

#[test]
fn a_recipe_syntax_error_is_one_line_as_rankforge_train_prints_it() {
    let dir = scratch("dp-bad-toml");
    let r = dir.join("bad.toml");
    std::fs::write(&r, "[run]\ndir = \"x\"\n[train\nlr = 1\n").unwrap();
    let out = launch(&["--nproc-per-node", "2", "--config", r.to_str().unwrap()], &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let train = rankforge(&["train", "--config", r.to_str().unwrap()]);
    let train_err = String::from_utf8_lossy(&train.stderr);
    assert_eq!(train.status.code(), Some(2), "{train_err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.trim_end(), format!("rankforge-launch: {}", train_err.trim_end()));
    assert!(err.contains(&format!("{}: line 3: ", r.display())), "{err}");
}

#[test]
fn bad_input_is_not_retried() {
    let dir = scratch("ft-fatal");
    let run = dir.join("run");
    let r = recipe(&dir, &run);
    // A missing tokenizer is bad input on every rank (exit 2): restarting cannot help.
    let out = launch(&["--nproc-per-node", "2", "--max-restarts", "3", "--config", r.to_str().unwrap(), "--set", "data.tokenizer=/nonexistent/tok"], &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("exit code 2 is not retried: bad input (recipe, data)"), "{err}");
    assert!(!err.contains("restarting"), "{err}");
    assert_no_orphans(&dir);
}

#[test]
fn sigterm_checkpoints_at_a_step_boundary_exits_75_and_a_rerun_resumes_exactly() {
    let dir = scratch("ft-preempt");
    let reference = reference_run(&dir);
    let (run, child) = restartable_run(&dir, &[]);
    wait_for_rows(&run, 60);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(rankforge_proto::EXIT_STOPPED), "{err}");
    assert!(err.contains("SIGTERM: every rank checkpoints at the next step boundary"), "{err}");
    // The newest checkpoint is the last step trained, and it is complete.
    let last = losses(&run).len() as u64;
    let (step, ckpt) = rankforge::checkpoint::list(&run).unwrap().pop().unwrap();
    assert_eq!(step, last, "checkpoint at the step boundary where the job stopped");
    assert!(last < 200, "stopped early");
    rankforge::checkpoint::verify(&ckpt).unwrap();
    assert_no_orphans(&dir);
    // Rerunning the same command resumes and finishes as if never stopped.
    rerun_matches(&dir, &reference);
}

#[test]
fn a_killed_launcher_takes_its_ranks_along_and_a_rerun_resumes_exactly() {
    let dir = scratch("ft-kill-job");
    let reference = reference_run(&dir);
    let (run, child) = restartable_run(&dir, &[]);
    wait_for_rows(&run, 60);
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait_with_output().unwrap();
    // The ranks die with their launcher (parent-death signal).
    assert_no_orphans(&dir);
    rerun_matches(&dir, &reference);
}

#[test]
fn a_corrupt_newest_checkpoint_is_named_and_the_previous_one_resumes_exactly() {
    let dir = scratch("ft-corrupt");
    let reference = reference_run(&dir);
    let (run, child) = restartable_run(&dir, &[]);
    wait_for_rows(&run, 60);
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(rankforge_proto::EXIT_STOPPED), "{}", String::from_utf8_lossy(&out.stderr));
    let cks = rankforge::checkpoint::list(&run).unwrap();
    let (newest, bad) = cks.last().unwrap().clone();
    let previous = cks[cks.len() - 2].0;
    // Truncate the newest checkpoint's weights, as a crash or full disk might have.
    let weights = bad.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&weights).unwrap().set_len(len / 2).unwrap();
    let (run, child) = restartable_run(&dir, &[]);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let log = std::fs::read_to_string(run.join("logs/rank0.log")).unwrap();
    assert!(log.contains(&format!("skipping damaged checkpoint {}", bad.display())) && log.contains("the manifest says"), "{log}");
    assert!(previous < newest);
    assert_eq!(compare(&reference, &run), (0.0, 0.0));
    assert_no_orphans(&dir);
}

/// One node of an elastic `--nnodes 1:2` job (one rank) running the restart tests' 200 steps.
fn elastic_node(dir: &Path, run: &Path, coord: &str, node_rank: &str, extra: &[&str]) -> std::process::Child {
    let r = recipe(dir, run);
    let mut args = vec!["--nnodes", "1:2", "--node-rank", node_rank, "--nproc-per-node", "1", "--coordinator", coord, "--grace-period", "1"];
    args.extend(extra);
    args.extend(["--config", r.to_str().unwrap()]);
    args.extend(LONG);
    launch(&args, &[("RANKFORGE_JOB_TOKEN", "elastic-secret-0123456789")]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn an_elastic_job_that_loses_a_node_continues_with_the_other_and_the_result_is_unchanged() {
    let dir = scratch("ft-elastic-lose");
    let reference = reference_run(&dir);
    let run = dir.join("elastic");
    let coord = format!("127.0.0.1:{}", free_port());
    let n0 = elastic_node(&dir, &run, &coord, "0", &[]);
    let mut n1 = elastic_node(&dir, &run, &coord, "1", &[]);
    wait_for_rows(&run, 60);
    // Node 1's launcher dies (its host, say): its rank dies with it.
    n1.kill().unwrap();
    n1.wait().unwrap();
    let out = n0.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("node(s) 1 lost") && err.contains("continuing with 1 node(s) as generation 1"), "{err}");
    assert!(err.contains("1 rank(s) on 1 node(s)"), "{err}");
    // Same global batch, same data order: the run ends as the uninterrupted 2-rank run does.
    assert_eq!(compare(&reference, &run), (0.0, 0.0));
    let log = std::fs::read_to_string(run.join("logs/rank0.log")).unwrap();
    assert!(log.contains("generation 1, restart 0 ==="), "the membership change uses no restart: {log}");
    assert_no_orphans(&dir);
}

#[test]
fn a_node_that_arrives_late_joins_an_elastic_job_at_its_next_restart() {
    let dir = scratch("ft-elastic-join");
    let reference = reference_run(&dir);
    let run = dir.join("elastic");
    let coord = format!("127.0.0.1:{}", free_port());
    // Node 0 alone: after a 1 s last call the round closes with one node (world 1).
    let n0 = elastic_node(&dir, &run, &coord, "0", &["--last-call", "1", "--max-restarts", "1"]);
    wait_for_rows(&run, 30);
    let n1 = elastic_node(&dir, &run, &coord, "1", &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(processes_with(&dir.display().to_string()).iter().filter(|p| p.contains(" train ")).count() == 1, "node 1 waits");
    // A failure is the next restart boundary: generation 1 has both nodes.
    wait_for_rows(&run, 60);
    unsafe { libc::kill(rank_pid(&dir, 0), libc::SIGKILL) };
    let (o0, o1) = (n0.wait_with_output().unwrap(), n1.wait_with_output().unwrap());
    let err = String::from_utf8_lossy(&o0.stderr);
    assert!(o0.status.success(), "{err}");
    assert!(o1.status.success(), "{}", String::from_utf8_lossy(&o1.stderr));
    assert!(err.contains("2 rank(s) on 2 node(s)"), "{err}");
    let log1 = std::fs::read_to_string(run.join("logs/rank1.log")).unwrap();
    assert!(log1.contains("rank 1, generation 1, restart 1 ==="), "{log1}");
    assert_eq!(compare(&reference, &run), (0.0, 0.0));
    assert_no_orphans(&dir);
}
