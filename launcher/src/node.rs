//! One node's life: (node 0: host the coordinator, start the hostfile's other nodes) → join →
//! spawn ranks → relay their output → watch exits, coordinator commands and signals → on any
//! failure, stop every rank (SIGTERM to its process group, grace period, SIGKILL; SIGKILL at
//! once for a rank declared dead by missed heartbeats) and print the root cause once. SIGINT,
//! SIGTERM and SIGUSR1 while no rank runs (rendezvous, back-off) end the launcher at once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use rankforge_proto::coordinator_client::CoordinatorClient;
use rankforge_proto::{auth, command, env as rfenv, hostname, CommandsRequest, JoinNodeRequest, ReportRequest, StopRequest, EXIT_STOPPED};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::coordinator::{JobPhase, Shared, State};
use crate::plan::{route_addr, Args, DeviceMode, Plan};
use crate::remote::start_remotes;
use crate::signals::{signal_name, stopped_while, Signals};

/// Lines of a failed rank's log shown in the failure report.
const TAIL_LINES: usize = 20;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// How a process ended, torchelastic style: its exit code, or `-signal`.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| -status.signal().unwrap_or(0))
}

/// The launcher's own exit code for a rank's: a signal N becomes 128 + N, like a shell.
fn launcher_code(code: i32) -> i32 {
    if code < 0 { 128 - code } else { code.max(1) }
}

/// A rank process this node started.
struct Rank {
    global: u32,
    pid: i32,
    tail: Arc<Mutex<VecDeque<String>>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    log: std::path::PathBuf,
}

/// What ended the watch of one generation.
enum Outcome {
    AllSucceeded,
    /// Every rank stopped on request after a checkpoint (preemption).
    Stopped,
    /// The job restarts as this generation; the ranks declared dead are SIGKILLed at once.
    Restart(u64, String, Vec<u32>),
    Aborted(String, i32, Vec<u32>),
    Signal(i32),
    CoordinatorLost(String),
}

/// What every rank of a generation is told.
struct GenerationSpec<'a> {
    generation: u64,
    restart: u32,
    world: u32,
    /// This node's index in the round, and the round's node count.
    group_rank: u32,
    nnodes: u32,
    coord_addr: &'a str,
    local_addr: &'a str,
}

pub async fn run(args: &Args, plan: Plan) -> Result<i32> {
    let mut signals = Signals::new()?;
    let host = hostname();
    let grace = Duration::from_secs_f64(args.grace_period.max(0.0));
    let join_timeout = Duration::from_secs_f64(args.join_timeout.max(0.0));
    let (chost, cport) = plan.coordinator.clone();

    // Node 0 hosts the coordinator, on exactly the address it was given.
    let shared = if plan.node_rank == 0 {
        let mut st = State::new(plan.token.clone(), plan.nnodes);
        st.min_nodes = plan.min_nodes;
        st.last_call = Duration::from_secs_f64(args.last_call.max(0.0));
        st.max_restarts = args.max_restarts;
        st.heartbeat_timeout = (args.heartbeat_timeout > 0.0).then(|| Duration::from_secs_f64(args.heartbeat_timeout));
        st.stall_timeout = (args.stall_timeout > 0.0).then(|| Duration::from_secs_f64(args.stall_timeout));
        Some(Shared::new(st))
    } else {
        None
    };
    let coord_addr = match &shared {
        Some(s) => {
            let bound = crate::serve(&chost, cport, s.clone()).await?;
            s.clone().spawn_monitor();
            let nodes = if plan.min_nodes < plan.nnodes { format!("{} to {}", plan.min_nodes, plan.nnodes) } else { plan.nnodes.to_string() };
            eprintln!("rankforge-launch: coordinator listening on {bound} (job {}, {nodes} node(s))", plan.run_id);
            bound.to_string()
        }
        None => format!("{chost}:{cport}"),
    };
    let mut remotes = start_remotes(args, &plan, &coord_addr)?;
    let mut client = match signals.unless_stopped(crate::connect(&coord_addr, join_timeout)).await {
        Ok(client) => client?,
        Err(sig) => return Ok(stopped_while(sig, &format!("connecting to the coordinator at {coord_addr}"))),
    };
    let local_addr = plan.local_addr.clone().or_else(|| route_addr(&chost, cport)).unwrap_or_else(|| "127.0.0.1".into());
    std::fs::create_dir_all(&plan.log_dir).with_context(|| format!("cannot create the log directory {}", plan.log_dir.display()))?;

    // After a first SIGTERM/SIGUSR1: ranks are checkpointing and will exit with EXIT_STOPPED.
    let mut stopping = false;
    let (remote_tx, mut remote_rx) = mpsc::unbounded_channel::<(String, i32)>();
    for (host, mut child) in remotes.drain(..) {
        let tx = remote_tx.clone();
        tokio::spawn(async move {
            let code = child.wait().await.map(exit_code).unwrap_or(-1);
            let _ = tx.send((host, code));
        });
    }
    drop(remote_tx);

    let mut generation = 0u64;
    let mut restart = 0u32;
    // The world of the previous round (printed again when membership changes).
    let mut last_world = None;
    let mut commands = None;
    loop {
        let join = client.join_node(JoinNodeRequest { auth: auth(&plan.token, generation), node_rank: plan.node_rank, nproc: plan.nproc, host: host.clone() });
        let joined = match signals.unless_stopped(tokio::time::timeout(join_timeout, join)).await {
            Ok(joined) => joined,
            Err(sig) => return Ok(stopped_while(sig, "waiting for the other nodes to join")),
        };
        let joined = joined
            .map_err(|_| anyhow!("not every node joined within {:.0} s (--join-timeout): {} node(s) expected", join_timeout.as_secs_f64(), plan.min_nodes))?
            .map_err(|s| anyhow!("the coordinator at {coord_addr} refused this node: {}", s.message()))?
            .into_inner();
        // A node joining an elastic job late learns the generation here.
        generation = joined.generation;
        // One command stream for the node's whole life (commands name their generation).
        let commands = match &mut commands {
            Some(c) => c,
            None => commands.insert(
                client
                    .commands(CommandsRequest { auth: auth(&plan.token, generation), rank: -1, node_rank: plan.node_rank })
                    .await
                    .map_err(|s| anyhow!("coordinator at {coord_addr}: {}", s.message()))?
                    .into_inner(),
            ),
        };
        let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(usize, i32)>();
        let mut ranks = Vec::new();
        let spec = GenerationSpec {
            generation,
            restart: joined.restart_count,
            world: joined.world_size,
            group_rank: joined.group_rank,
            nnodes: joined.nnodes,
            coord_addr: &coord_addr,
            local_addr: &local_addr,
        };
        for local in 0..plan.nproc as usize {
            let global = joined.rank_offset + local as u32;
            let r = spawn_rank(args, &plan, local, global, &spec, exit_tx.clone())
                .with_context(|| format!("cannot start rank {global} ({})", plan.rank_binary.display()))?;
            ranks.push(r);
        }
        drop(exit_tx);
        if plan.node_rank == 0 && last_world != Some(joined.world_size) {
            eprintln!(
                "rankforge-launch: {} rank(s) on {} node(s), {} thread(s) per rank, logs in {}",
                joined.world_size,
                joined.nnodes,
                plan.threads_per_rank,
                plan.log_dir.display()
            );
        }
        last_world = Some(joined.world_size);
        let started = Instant::now();
        let report = |rank: i32, success: bool, code: i32, message: String| ReportRequest {
            auth: auth(&plan.token, generation),
            rank,
            node_rank: plan.node_rank,
            success,
            exit_code: code,
            host: host.clone(),
            message,
            timestamp: now(),
        };

        let mut running: BTreeMap<usize, i32> = ranks.iter().enumerate().map(|(i, r)| (i, r.pid)).collect();
        // The first local failure of this generation is reported; later ones are its consequences.
        let mut reported: Option<i32> = None;
        let mut stopped_ranks = 0;
        let outcome = loop {
            tokio::select! {
                Some((local, code)) = exit_rx.recv() => {
                    running.remove(&local);
                    if code == EXIT_STOPPED {
                        stopped_ranks += 1;
                        if running.is_empty() && reported.is_none() {
                            break Outcome::Stopped;
                        }
                    } else if code != 0 && reported.is_none() {
                        reported = Some(code);
                        drain(&mut ranks[local].pumps).await;
                        let r = &ranks[local];
                        let tail: Vec<String> = r.tail.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect();
                        let what = match code {
                            c if c < 0 => format!("killed by {} (signal {})", signal_name(-c), -c),
                            c => format!("exit code {c}"),
                        };
                        let error = ensure_error_file(&error_file(&plan, r.global), r.pid, code, &tail);
                        let msg = format!("pid {}, {what}: {error}; log {}", r.pid, r.log.display());
                        let detail = if tail.is_empty() { msg } else { format!("{msg}\n    | {}", tail.join("\n    | ")) };
                        eprintln!("rankforge-launch: rank {} failed ({what}); waiting for the coordinator's decision", r.global);
                        if client.report(report(r.global as i32, false, code, detail)).await.is_err() {
                            break Outcome::CoordinatorLost("it did not take the failure report".into());
                        }
                    } else if code == 0 {
                        let _ = client.report(report(ranks[local].global as i32, true, 0, String::new())).await;
                        if running.is_empty() && reported.is_none() {
                            break if stopped_ranks > 0 { Outcome::Stopped } else { Outcome::AllSucceeded };
                        }
                    }
                }
                msg = commands.message() => match msg {
                    Ok(Some(cmd)) => match command::Kind::try_from(cmd.kind) {
                        Ok(command::Kind::Abort) => break Outcome::Aborted(cmd.reason, cmd.exit_code, cmd.dead_ranks),
                        Ok(command::Kind::Restart) if cmd.generation > generation => break Outcome::Restart(cmd.generation, cmd.reason, cmd.dead_ranks),
                        _ => {}
                    },
                    Ok(None) => break Outcome::CoordinatorLost("it closed the command stream".into()),
                    Err(s) => break Outcome::CoordinatorLost(s.message().to_string()),
                },
                Some((rhost, code)) = remote_rx.recv(), if plan.node_rank == 0 => {
                    if code != 0 && reported.is_none() {
                        reported = Some(code);
                        let _ = client.report(report(-1, false, code, format!("the launcher on {rhost} exited with code {code}"))).await;
                    }
                }
                _ = signals.usr2.recv() => match &shared {
                    Some(s) => {
                        eprintln!("rankforge-launch: SIGUSR2: asking every rank to checkpoint at the next step boundary");
                        s.broadcast(command::Kind::Checkpoint, "SIGUSR2 to the launcher");
                    }
                    None => eprintln!("rankforge-launch: SIGUSR2 ignored: send it to node 0's launcher, which hosts the coordinator"),
                },
                _ = signals.int.recv() => break Outcome::Signal(libc::SIGINT),
                sig = async { tokio::select! { _ = signals.term.recv() => libc::SIGTERM, _ = signals.usr1.recv() => libc::SIGUSR1 } } => {
                    if stopping {
                        break Outcome::Signal(sig);
                    }
                    stopping = true;
                    eprintln!(
                        "rankforge-launch: {}: every rank checkpoints at the next step boundary and exits ({EXIT_STOPPED}); send it again to stop at once",
                        signal_name(sig)
                    );
                    let req = StopRequest { auth: auth(&plan.token, generation), reason: format!("{} to the launcher on {host}", signal_name(sig)) };
                    if client.stop(req).await.is_err() {
                        break Outcome::Signal(sig);
                    }
                }
            }
        };

        // The ranks of this node the coordinator declared dead: SIGKILLed at once in teardown.
        let dead_here = |dead: &[u32]| -> BTreeSet<usize> {
            let here: BTreeSet<usize> = ranks.iter().enumerate().filter(|(i, r)| dead.contains(&r.global) && running.contains_key(i)).map(|(i, _)| i).collect();
            for i in &here {
                eprintln!("rankforge-launch: rank {} (pid {}) sent no heartbeat: killing it at once (SIGKILL)", ranks[*i].global, ranks[*i].pid);
            }
            here
        };
        let code = match outcome {
            Outcome::Restart(next, reason, dead) => {
                let kill_now = dead_here(&dead);
                teardown(&mut running, &mut exit_rx, grace, &kill_now).await;
                for r in &mut ranks {
                    drain(&mut r.pumps).await;
                }
                // A crash loop backs off: restarts after a generation that lived under 30 s wait
                // 1, 2, 4 … 30 s (the first restart is immediate).
                let lived = started.elapsed();
                let wait = if restart == 0 || lived > Duration::from_secs(30) { 0 } else { (1u64 << (restart - 1).min(5)).min(30) };
                eprintln!(
                    "rankforge-launch: restarting this node's ranks as generation {next}{}",
                    if wait > 0 { format!(" in {wait} s (crash loop back-off)") } else { String::new() }
                );
                if plan.node_rank != 0 {
                    eprintln!("rankforge-launch: {reason}"); // node 0's coordinator printed it there
                }
                if let Err(sig) = signals.unless_stopped(tokio::time::sleep(Duration::from_secs(wait))).await {
                    return Ok(stopped_while(sig, "waiting to restart (crash loop back-off)"));
                }
                generation = next;
                restart += 1;
                continue;
            }
            Outcome::Stopped => {
                let _ = client.report(report(-1, true, 0, String::new())).await;
                if let Some(shared) = &shared {
                    if let Err(sig) = signals.unless_stopped(wait_for_nodes(shared, join_timeout)).await {
                        return Ok(stopped_while(sig, "waiting for the other nodes to stop"));
                    }
                }
                eprintln!("rankforge-launch: stopped after a checkpoint at a step boundary; rerun the same command to resume");
                if plan.node_rank == 0 {
                    requeue(args, &plan).await;
                }
                EXIT_STOPPED
            }
            Outcome::AllSucceeded => {
                let _ = client.report(report(-1, true, 0, String::new())).await;
                match &shared {
                    Some(shared) => match signals.unless_stopped(wait_for_nodes(shared, join_timeout)).await {
                        Ok(code) => code,
                        Err(sig) => stopped_while(sig, "waiting for the other nodes to finish"),
                    },
                    None => 0,
                }
            }
            Outcome::Aborted(reason, code, dead) => {
                let kill_now = dead_here(&dead);
                teardown(&mut running, &mut exit_rx, grace, &kill_now).await;
                eprintln!("rankforge-launch: job failed; root cause: {reason}");
                launcher_code(code)
            }
            Outcome::Signal(sig) => {
                eprintln!("rankforge-launch: received {}: stopping all ranks", signal_name(sig));
                let _ = client.report(report(-1, false, -sig, format!("the launcher received {}", signal_name(sig)))).await;
                teardown(&mut running, &mut exit_rx, grace, &BTreeSet::new()).await;
                128 + sig
            }
            Outcome::CoordinatorLost(why) => {
                teardown(&mut running, &mut exit_rx, grace, &BTreeSet::new()).await;
                eprintln!("rankforge-launch: lost the coordinator at {coord_addr} ({why}): stopped this node's ranks");
                1
            }
        };
        for r in &mut ranks {
            drain(&mut r.pumps).await;
        }
        let _ = std::io::stdout().flush();
        return Ok(code);
    }
}

/// Node 0, after its own ranks succeeded: waits for the other nodes, so the coordinator outlives
/// their last calls. Returns the exit code.
async fn wait_for_nodes(shared: &Arc<Shared>, timeout: Duration) -> i32 {
    let started = Instant::now();
    let mut changes = shared.subscribe();
    loop {
        changes.borrow_and_update();
        let (phase, root) = {
            let st = shared.lock();
            (st.phase, st.root_cause())
        };
        match phase {
            JobPhase::Done => return 0,
            JobPhase::Failed => {
                eprintln!("rankforge-launch: job failed; root cause: {}", root.map(|f| f.to_string()).unwrap_or_default());
                return 1;
            }
            _ if started.elapsed() > timeout => {
                eprintln!("rankforge-launch: this node finished, but not every node reported within {:.0} s", timeout.as_secs_f64());
                return 1;
            }
            // Woken by the other nodes' reports; the timeout is checked at least every second.
            _ => {
                let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
            }
        }
    }
}

async fn drain(pumps: &mut Vec<tokio::task::JoinHandle<()>>) {
    for p in pumps.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
}

/// SIGTERM to every running rank's process group, up to `grace` to exit, then SIGKILL. The
/// `dead` ones (local indices; declared dead by missed heartbeats: frozen or hung, they cannot
/// act on SIGTERM) get SIGKILL at once.
async fn teardown(running: &mut BTreeMap<usize, i32>, exits: &mut mpsc::UnboundedReceiver<(usize, i32)>, grace: Duration, dead: &BTreeSet<usize>) {
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

fn spawn_rank(args: &Args, plan: &Plan, local: usize, global: u32, g: &GenerationSpec, exits: mpsc::UnboundedSender<(usize, i32)>) -> Result<Rank> {
    let (world, coord_addr) = (g.world, g.coord_addr);
    let _ = std::fs::remove_file(error_file(plan, global)); // a previous generation's
    let mut cmd = Command::new(&plan.rank_binary);
    cmd.args(&plan.rank_args);
    let (maddr, mport) = coord_addr.rsplit_once(':').unwrap_or((coord_addr, "0"));
    let vars: Vec<(&str, String)> = vec![
        ("RANK", global.to_string()),
        ("LOCAL_RANK", local.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("LOCAL_WORLD_SIZE", plan.nproc.to_string()),
        ("GROUP_RANK", g.group_rank.to_string()),
        ("GROUP_WORLD_SIZE", g.nnodes.to_string()),
        ("ROLE_NAME", "default".into()),
        ("ROLE_RANK", global.to_string()),
        ("ROLE_WORLD_SIZE", world.to_string()),
        ("MASTER_ADDR", maddr.to_string()),
        ("MASTER_PORT", mport.to_string()),
        ("TORCHELASTIC_RESTART_COUNT", g.restart.to_string()),
        ("TORCHELASTIC_MAX_RESTARTS", args.max_restarts.to_string()),
        ("TORCHELASTIC_RUN_ID", plan.run_id.clone()),
        (rfenv::COORDINATOR, coord_addr.to_string()),
        (rfenv::JOB_TOKEN, plan.token.clone()),
        (rfenv::GENERATION, g.generation.to_string()),
        (rfenv::LOCAL_ADDR, g.local_addr.to_string()),
        (rfenv::HEARTBEAT_INTERVAL, heartbeat_interval(args).to_string()),
        ("TORCHELASTIC_ERROR_FILE", error_file(plan, global).display().to_string()),
        (rfenv::JOIN_TIMEOUT, args.join_timeout.to_string()),
    ];
    cmd.envs(vars);
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        cmd.env("OMP_NUM_THREADS", plan.threads_per_rank.to_string());
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
    let mut pumps = Vec::new();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    pumps.push(tokio::spawn(pump(stdout, global, show, false, file.clone(), tail.clone())));
    pumps.push(tokio::spawn(pump(stderr, global, show, true, file, tail.clone())));
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

/// `--requeue N` under Slurm: puts the job back in the queue after a clean stop, at most N times.
async fn requeue(args: &Args, plan: &Plan) {
    let Some(max) = args.requeue else { return };
    let Some((job, count)) = &plan.slurm_job else {
        eprintln!("rankforge-launch: --requeue ignored: not running under Slurm");
        return;
    };
    if *count >= max {
        eprintln!("rankforge-launch: not requeued: SLURM_RESTART_COUNT = {count} reached --requeue {max}");
        return;
    }
    match Command::new("scontrol").args(["requeue", job]).status().await {
        Ok(s) if s.success() => eprintln!("rankforge-launch: requeued Slurm job {job} (restart {} of {max})", count + 1),
        Ok(s) => eprintln!("rankforge-launch: scontrol requeue {job} failed ({s})"),
        Err(e) => eprintln!("rankforge-launch: cannot run scontrol requeue {job}: {e}"),
    }
}

/// Where rank `global` writes (or its launcher writes for it) a torchelastic-style error.json.
fn error_file(plan: &Plan, global: u32) -> std::path::PathBuf {
    plan.log_dir.join(format!("rank{global}.error.json"))
}

/// The failed rank's error.json: the one it wrote itself (rankforge does, for its errors), else
/// one written here for it (a death by signal) in torchelastic's format. Returns its message.
fn ensure_error_file(path: &std::path::Path, pid: i32, code: i32, tail: &[String]) -> String {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(m) = v["message"]["message"].as_str() {
                return m.to_string();
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
    message
}

/// Seconds between a rank's heartbeats: a third of the timeout, at most 2 s.
fn heartbeat_interval(args: &Args) -> f64 {
    if args.heartbeat_timeout > 0.0 { (args.heartbeat_timeout / 3.0).min(2.0) } else { 2.0 }
}

/// The client's type, for callers that want to talk to the coordinator themselves.
pub type Client = CoordinatorClient<Channel>;
