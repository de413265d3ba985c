//! rankforge-launch as a torchrun replacement: plain PyTorch programs (tests/py/
//! torch_launch_programs.py: gloo on loopback, `init_method="env://"`) from the project's venv.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tests/procs.rs"]
mod procs;
use procs::processes_with;

fn launcher() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rankforge-launch"));
    c.env_remove("RANKFORGE_JOB_TOKEN").env_remove("MASTER_ADDR").env_remove("MASTER_PORT").env_remove("OMP_NUM_THREADS");
    c
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The project's Python with torch (scripts/setup.sh makes it).
fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh first", p.display());
    p
}

fn program() -> String {
    root().join("tests/py/torch_launch_programs.py").display().to_string()
}

fn check(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed ({:?}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The coordinator's port, from node 0's "coordinator listening on HOST:PORT" line.
fn coordinator_port(stderr: &str) -> String {
    let line = stderr.lines().find(|l| l.contains("coordinator listening on ")).unwrap_or_else(|| panic!("no coordinator line: {stderr}"));
    let addr = line.split("coordinator listening on ").nth(1).unwrap().split_whitespace().next().unwrap();
    addr.rsplit_once(':').unwrap().1.to_string()
}

#[test]
fn a_ddp_program_on_two_ranks_and_on_two_simulated_nodes_trains_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    // torchrun's script form: a .py after `--` runs under --python.
    let out = launcher()
        .args(["--nproc-per-node", "2", "--log-dir", tmp.path().join("logs1").to_str().unwrap(), "--python", python().to_str().unwrap()])
        .args(["--", &program(), "ddp", one.to_str().unwrap()])
        .output()
        .unwrap();
    check(&out, "one node, two ranks");
    // Two launchers of one rank each, with torchrun's --no-python form.
    let coord = format!("127.0.0.1:{}", free_port());
    let nodes: Vec<_> = [1, 0]
        .map(|node| {
            launcher()
                .args(["--nnodes", "2", "--node-rank", &node.to_string(), "--nproc-per-node", "1", "--rdzv-endpoint", &coord])
                .args(["--log-dir", tmp.path().join(format!("logs-node{node}")).to_str().unwrap(), "--no-python", "--"])
                .args([python().to_str().unwrap(), &program(), "ddp", two.to_str().unwrap()])
                .env("RANKFORGE_JOB_TOKEN", "torch-ddp-test-token")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .into_iter()
        .collect();
    for (node, child) in [1, 0].iter().zip(nodes) {
        check(&child.wait_with_output().unwrap(), &format!("node {node}"));
    }
    let w = |dir: &Path, r: u32| json(&dir.join(format!("weights.rank{r}.json")));
    let reference = w(&one, 0);
    assert!(reference["last_loss"].as_f64().unwrap() < reference["first_loss"].as_f64().unwrap(), "it trained: {reference}");
    for (dir, r) in [(&one, 1), (&two, 0), (&two, 1)] {
        assert_eq!(w(dir, r)["weights"], reference["weights"], "{} rank {r} vs one node's rank 0", dir.display());
    }
}

#[test]
fn a_program_failing_on_its_first_attempt_succeeds_on_the_restart_with_a_new_master_port() {
    let tmp = tempfile::tempdir().unwrap();
    let out = launcher()
        .args(["--nproc-per-node", "2", "--max-restarts", "1", "--log-dir", tmp.path().join("logs").to_str().unwrap()])
        .args(["--python", python().to_str().unwrap(), "--", &program(), "fail-once", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    check(&out, "fail-once under --max-restarts 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("restart 1 of 1, root cause: rank 1 on") && err.contains("exited with code 3"), "{err}");
    let coordinator = coordinator_port(&err);
    for r in 0..2 {
        let attempts = std::fs::read_to_string(tmp.path().join(format!("attempts.rank{r}"))).unwrap();
        let lines: Vec<Vec<&str>> = attempts.lines().map(|l| l.split(' ').collect()).collect();
        assert_eq!(lines.iter().map(|l| l[0]).collect::<Vec<_>>(), ["0", "1"], "rank {r}: TORCHELASTIC_RESTART_COUNT per attempt: {attempts}");
        assert_ne!(lines[0][1], lines[1][1], "rank {r}: each generation gets its own MASTER_PORT: {attempts}");
        assert!(lines.iter().all(|l| l[1] != coordinator), "MASTER_PORT is not the coordinator's {coordinator}: {attempts}");
    }
}

#[test]
fn a_record_decorated_failure_is_the_root_cause_with_its_message_and_traceback() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let out = launcher()
        .args(["--nproc-per-node", "2", "--grace-period", "5", "--log-dir", logs.to_str().unwrap()])
        .args(["--python", python().to_str().unwrap(), "--", &program(), "record", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let report = &err[err.find("job failed; root cause: ").unwrap_or_else(|| panic!("no report: {err}"))..];
    assert!(report.starts_with("job failed; root cause: rank 1 on") && report.contains("exited with code 1"), "{report}");
    assert!(report.contains("ValueError: rank 1 cannot find shard 7"), "the error file's message: {report}");
    assert!(report.contains(&format!("traceback (the end of {}", logs.join("rank1.error.json").display())), "{report}");
    assert!(report.contains("| ValueError: rank 1 cannot find shard 7") && report.contains("in record_main"), "its traceback: {report}");
    let e = json(&logs.join("rank1.error.json"));
    assert_eq!(e["message"]["message"], "ValueError: rank 1 cannot find shard 7", "written by torch's @record");
}

#[test]
fn a_rank_hanging_in_a_collective_is_killed_after_the_grace_period_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = launcher()
        .args(["--nproc-per-node", "3", "--grace-period", "2", "--log-dir", tmp.path().join("logs").to_str().unwrap()])
        .args(["--python", python().to_str().unwrap(), "--", &program(), "hang", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "the root cause's exit code: {err}");
    assert!(err.contains("root cause: rank 2 on") && err.contains("exited with code 4"), "{err}");
    // SIGTERM came and did not end them (rank 1's handler ran; rank 0's cannot, inside the
    // collective): the grace period's SIGKILL did.
    let log1 = std::fs::read_to_string(tmp.path().join("logs/rank1.log")).unwrap();
    assert!(log1.contains("rank 1 ignores SIGTERM"), "{log1}");
    assert!(err.contains("grace period") && err.contains("SIGKILL"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(120), "{:?}", started.elapsed());
    for r in 0..3 {
        let pid = std::fs::read_to_string(tmp.path().join(format!("pid.rank{r}"))).unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        assert!(stat.is_empty() || stat.rsplit(')').next().unwrap().trim_start().starts_with('Z'), "rank {r} (pid {pid}) is still alive");
    }
    assert_eq!(processes_with(tmp.path().to_str().unwrap()), Vec::<String>::new(), "processes left behind");
}

/// The variables a launcher added to a program's environment (`base` is what it was given).
fn added(env: &serde_json::Value, base: &[(&str, &str)]) -> BTreeMap<String, String> {
    let env = env.as_object().unwrap();
    env.iter().filter(|(k, _)| !base.iter().any(|(b, _)| b == k) && *k != "LC_CTYPE").map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect()
}

#[test]
fn torchrun_and_rankforge_launch_give_a_program_the_same_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let (t_out, r_out) = (tmp.path().join("torchrun"), tmp.path().join("rankforge"));
    std::fs::create_dir_all(&t_out).unwrap();
    std::fs::create_dir_all(&r_out).unwrap();
    let home = tmp.path().display().to_string();
    let base = [("PATH", "/usr/bin:/bin"), ("HOME", home.as_str())];
    let torchrun = Command::new(python())
        .args(["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d"])
        .args(["--rdzv-endpoint", &format!("127.0.0.1:{}", free_port()), "--rdzv-id", "envjob", "--max-restarts", "2"])
        .args([&program(), "env", t_out.to_str().unwrap()])
        .env_clear()
        .envs(base)
        .output()
        .unwrap();
    check(&torchrun, "torchrun");
    let ours = Command::new(env!("CARGO_BIN_EXE_rankforge-launch"))
        .args(["--nnodes", "1", "--nproc-per-node", "2", "--rdzv-id", "envjob", "--max-restarts", "2", "--log-dir", tmp.path().join("logs").to_str().unwrap()])
        .args(["--python", python().to_str().unwrap(), "--", &program(), "env", r_out.to_str().unwrap()])
        .env_clear()
        .envs(base)
        .output()
        .unwrap();
    check(&ours, "rankforge-launch");
    let coordinator = coordinator_port(&String::from_utf8_lossy(&ours.stderr));
    // Documented differences: torchrun's agent store and its own signal list; the ports, the
    // error file's path and the host name of MASTER_ADDR are each launcher's own.
    let torchrun_only = ["TORCHELASTIC_SIGNALS_TO_HANDLE"];
    let differ = ["MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_USE_AGENT_STORE"];
    for r in 0..2 {
        let t = added(&json(&t_out.join(format!("env.rank{r}.json"))), &base);
        let ours = added(&json(&r_out.join(format!("env.rank{r}.json"))), &base);
        assert!(t.contains_key("TORCHELASTIC_RUN_ID") && t.contains_key("OMP_NUM_THREADS"), "torchrun's environment: {t:?}");
        for (k, v) in &t {
            if torchrun_only.contains(&k.as_str()) {
                continue;
            }
            let mine = ours.get(k).unwrap_or_else(|| panic!("rank {r}: torchrun sets {k}={v}, rankforge-launch does not"));
            if !differ.contains(&k.as_str()) {
                assert_eq!(mine, v, "rank {r}: {k}");
            }
        }
        let extra: Vec<&String> = ours.keys().filter(|k| !t.contains_key(*k)).collect();
        assert!(extra.iter().all(|k| k.starts_with("RANKFORGE_")), "rank {r}: only rankforge's own variables are extra: {extra:?}");
        assert_eq!(ours["TORCHELASTIC_USE_AGENT_STORE"], "False");
        assert_eq!(ours["MASTER_ADDR"], "127.0.0.1");
        assert_ne!(ours["MASTER_PORT"], coordinator, "the store's port is not the coordinator's");
        assert!(ours["TORCHELASTIC_ERROR_FILE"].ends_with(&format!("logs/rank{r}.error.json")), "{}", ours["TORCHELASTIC_ERROR_FILE"]);
    }
}
