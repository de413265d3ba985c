//! One rank process: its environment, its start (own process group, parent-death signal), the
//! relay of its output into its log, its tail and the console, its error file, and teardown.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use rankforge_proto::env as rfenv;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::plan::{Args, DeviceMode, Plan};
use crate::signals::signal_name;

/// Lines of a failed rank's log shown in the failure report.
pub(crate) const TAIL_LINES: usize = 20;

pub(crate) fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// How a process ended, torchelastic style: its exit code, or `-signal`.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| -status.signal().unwrap_or(0))
}

/// A rank process this node started.
pub(crate) struct Rank {
    pub global: u32,
    pub pid: i32,
    pub tail: Arc<Mutex<VecDeque<String>>>,
    pub pumps: Vec<tokio::task::JoinHandle<()>>,
    pub log: PathBuf,
}

impl Rank {
    /// The last lines of its output.
    pub fn tail(&self) -> Vec<String> {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

/// What every rank of a generation is told.
pub(crate) struct GenerationSpec<'a> {
    pub generation: u64,
    pub restart: u32,
    pub world: u32,
    /// This node's index in the round, and the round's node count.
    pub group_rank: u32,
    pub nnodes: u32,
    pub coord_addr: &'a str,
    pub local_addr: &'a str,
    /// Node 0's address and the free port it chose for this generation (torchrun's
    /// MASTER_ADDR/MASTER_PORT, where a program's rank 0 binds its store).
    pub master_addr: &'a str,
    pub master_port: u32,
}

/// torchrun's variables and rankforge's own for local rank `local` (global rank `global`).
fn rank_env(args: &Args, plan: &Plan, local: usize, global: u32, g: &GenerationSpec) -> Vec<(&'static str, String)> {
    let (world, coord_addr) = (g.world, g.coord_addr);
    vec![
        ("RANK", global.to_string()),
        ("LOCAL_RANK", local.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("LOCAL_WORLD_SIZE", plan.nproc.to_string()),
        ("GROUP_RANK", g.group_rank.to_string()),
        ("GROUP_WORLD_SIZE", g.nnodes.to_string()),
        ("ROLE_NAME", "default".into()),
        ("ROLE_RANK", global.to_string()),
        ("ROLE_WORLD_SIZE", world.to_string()),
        ("MASTER_ADDR", g.master_addr.to_string()),
        ("MASTER_PORT", g.master_port.to_string()),
        ("TORCHELASTIC_RESTART_COUNT", g.restart.to_string()),
        ("TORCHELASTIC_MAX_RESTARTS", args.max_restarts.to_string()),
        ("TORCHELASTIC_RUN_ID", plan.run_id.clone()),
        // No agent store is offered: a program's rank 0 hosts its own store on MASTER_PORT.
        ("TORCHELASTIC_USE_AGENT_STORE", "False".into()),
        (rfenv::COORDINATOR, coord_addr.to_string()),
        (rfenv::JOB_TOKEN, plan.token.clone()),
        (rfenv::GENERATION, g.generation.to_string()),
        (rfenv::LOCAL_ADDR, g.local_addr.to_string()),
        (rfenv::HEARTBEAT_INTERVAL, heartbeat_interval(args).to_string()),
        ("TORCHELASTIC_ERROR_FILE", error_file(plan, global).display().to_string()),
        (rfenv::JOIN_TIMEOUT, args.join_timeout.to_string()),
    ]
}

/// Starts local rank `local` (global rank `global`) in its own process group, dying with the
/// launcher; its exit code goes to `exits` as `(local, code)`.
pub(crate) fn spawn_rank(args: &Args, plan: &Plan, local: usize, global: u32, g: &GenerationSpec, exits: mpsc::UnboundedSender<(usize, i32)>) -> Result<Rank> {
    let _ = std::fs::remove_file(error_file(plan, global)); // a previous generation's
    let mut cmd = Command::new(&plan.rank_binary);
    cmd.args(&plan.rank_args);
    cmd.envs(rank_env(args, plan, local, global, g));
    // rankforge ranks share the cores; a program gets torchrun's 1 when ranks share the node.
    if std::env::var_os("OMP_NUM_THREADS").is_none() && !(plan.program && plan.nproc == 1) {
        cmd.env("OMP_NUM_THREADS", if plan.program { "1".into() } else { plan.threads_per_rank.to_string() });
    }
    if std::env::var_os("TORCH_NCCL_ASYNC_ERROR_HANDLING").is_none() {
        cmd.env("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"); // as torchrun
    }
    if plan.mode == DeviceMode::Gpu {
        cmd.env("CUDA_VISIBLE_DEVICES", &plan.gpus[local]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(false);
    // Own process group (teardown signals the whole group); die with the launcher.
    cmd.process_group(0);
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() == 1 {
                libc::_exit(1); // the launcher died before the signal was armed
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().ok_or_else(|| anyhow!("rank exited at once"))? as i32;
    let log = plan.log_dir.join(format!("rank{global}.log"));
    // Appended across restarts, each generation under its own header.
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&log).with_context(|| format!("cannot open {}", log.display()))?;
    writeln!(f, "=== rankforge-launch: rank {global}, generation {}, restart {} ===", g.generation, g.restart)?;
    let file = Arc::new(Mutex::new(f));
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let show = args.all_ranks || global == 0;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let pumps = vec![
        tokio::spawn(pump(stdout, global, show, false, file.clone(), tail.clone())),
        tokio::spawn(pump(stderr, global, show, true, file, tail.clone())),
    ];
    tokio::spawn(async move {
        let code = child.wait().await.map(exit_code).unwrap_or(-1);
        let _ = exits.send((local, code));
    });
    Ok(Rank { global, pid, tail, pumps, log })
}

/// Copies a rank's output line by line into its log, its tail buffer and (if shown) the console.
async fn pump(
    stream: impl tokio::io::AsyncRead + Unpin,
    rank: u32,
    show: bool,
    is_err: bool,
    file: Arc<Mutex<std::fs::File>>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = writeln!(file.lock().unwrap_or_else(PoisonError::into_inner), "{line}");
        {
            let mut t = tail.lock().unwrap_or_else(PoisonError::into_inner);
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.clone());
        }
        if show {
            if is_err {
                eprintln!("[rank {rank}] {line}");
            } else {
                println!("[rank {rank}] {line}");
            }
        }
    }
}

/// Waits (up to 2 s each) for a rank's output relays to copy what is left.
pub(crate) async fn drain(pumps: &mut Vec<tokio::task::JoinHandle<()>>) {
    for p in pumps.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
}

/// SIGTERM to every running rank's process group, up to `grace` to exit, then SIGKILL. The
/// `dead` ones (local indices; declared dead by missed heartbeats: frozen or hung, they cannot
/// act on SIGTERM) get SIGKILL at once.
pub(crate) async fn teardown(running: &mut BTreeMap<usize, i32>, exits: &mut mpsc::UnboundedReceiver<(usize, i32)>, grace: Duration, dead: &BTreeSet<usize>) {
    for (local, pid) in running.iter() {
        unsafe { libc::kill(-pid, if dead.contains(local) { libc::SIGKILL } else { libc::SIGTERM }) };
    }
    let deadline = tokio::time::Instant::now() + grace;
    while !running.is_empty() {
        match tokio::time::timeout_at(deadline, exits.recv()).await {
            Ok(Some((local, _))) => {
                running.remove(&local);
            }
            Ok(None) => break,
            Err(_) => {
                for pid in running.values() {
                    eprintln!(
                        "rankforge-launch: pid {pid} did not exit within the grace period ({:.0} s, --grace-period) after SIGTERM: sending SIGKILL",
                        grace.as_secs_f64()
                    );
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                while !running.is_empty() {
                    match tokio::time::timeout(Duration::from_secs(5), exits.recv()).await {
                        Ok(Some((local, _))) => {
                            running.remove(&local);
                        }
                        _ => break,
                    }
                }
            }
        }
    }
}

/// Where rank `global` writes (or its launcher writes for it) a torchelastic-style error.json.
pub(crate) fn error_file(plan: &Plan, global: u32) -> PathBuf {
    plan.log_dir.join(format!("rank{global}.error.json"))
}

/// What a failed rank's error.json says.
pub(crate) struct ErrorReport {
    pub message: String,
    /// The end of the traceback the rank wrote itself (torch's `@record` does); empty for a
    /// one-line call stack and for the files the launcher writes.
    pub traceback: Vec<String>,
}

/// The failed rank's error.json: the one it wrote itself (rankforge does for its errors, torch's
/// `@record` for a Python exception), else one written here for it (a death by signal, an exit
/// without a file) in torchelastic's format.
pub(crate) fn ensure_error_file(path: &Path, pid: i32, code: i32, tail: &[String]) -> ErrorReport {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(m) = v["message"]["message"].as_str() {
                let stack: Vec<String> = v["message"]["extraInfo"]["py_callstack"].as_str().unwrap_or("").lines().map(str::to_string).collect();
                let traceback = if stack.len() > 1 { stack[stack.len().saturating_sub(TAIL_LINES)..].to_vec() } else { Vec::new() };
                return ErrorReport { message: m.to_string(), traceback };
            }
        }
    }
    let message = if code < 0 {
        format!("Signal {} ({}) received by PID {pid}", -code, signal_name(-code))
    } else {
        format!("Process {pid} exited with code {code} without an error file")
    };
    let v = serde_json::json!({"message": {"message": message, "extraInfo": {"py_callstack": tail.join("\n"), "timestamp": format!("{}", now() as u64)}}});
    let _ = std::fs::write(path, format!("{v:#}\n"));
    ErrorReport { message, traceback: Vec::new() }
}

/// Sends `sig` to every running rank's process group (SIGTERM/SIGUSR1 forwarded to programs).
pub(crate) fn forward(running: &BTreeMap<usize, i32>, sig: i32) {
    for pid in running.values() {
        unsafe { libc::kill(-pid, sig) };
    }
}

/// Seconds between a rank's heartbeats: a third of the timeout, at most 2 s.
fn heartbeat_interval(args: &Args) -> f64 {
    if args.heartbeat_timeout > 0.0 { (args.heartbeat_timeout / 3.0).min(2.0) } else { 2.0 }
}
