//! One node's life: (node 0: host the coordinator, start the hostfile's other nodes) → join →
//! spawn ranks → relay their output → watch exits, coordinator commands and signals → on any
//! failure, stop every rank (SIGTERM to its process group, grace period, SIGKILL; SIGKILL at
//! once for a rank declared dead by missed heartbeats) and print the root cause once. SIGINT,
//! SIGTERM and SIGUSR1 while no rank runs (rendezvous, back-off) end the launcher at once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rankforge_proto::coordinator_client::CoordinatorClient;
use rankforge_proto::{auth, command, hostname, CommandsRequest, JoinNodeReply, JoinNodeRequest, ReportRequest, StopRequest, EXIT_STOPPED};
use tokio::process::Command;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::coordinator::{JobPhase, Shared, State};
use crate::plan::{route_addr, Args, Plan};
use crate::rank::{drain, ensure_error_file, error_file, exit_code, forward, now, spawn_rank, teardown, GenerationSpec, Rank};
use crate::remote::start_remotes;
use crate::signals::{signal_name, stopped_while, Signals};

/// The client's type, for callers that want to talk to the coordinator themselves.
pub type Client = CoordinatorClient<Channel>;

/// The launcher's own exit code for a rank's: a signal N becomes 128 + N, like a shell.
fn launcher_code(code: i32) -> i32 {
    if code < 0 { 128 - code } else { code.max(1) }
}

/// What ended the watch of one generation.
enum Outcome {
    AllSucceeded,
    /// Every rank stopped on request (preemption), the launcher exits with this code: 75 after
    /// rankforge ranks' checkpoint, or when every program exited 0 or 75 after the forwarded
    /// signal; else the first other program's code, 128 + N for a death by signal N.
    Stopped(i32),
    /// The job restarts as this generation; the ranks declared dead are SIGKILLed at once.
    Restart(u64, String, Vec<u32>),
    Aborted(String, i32, Vec<u32>),
    Signal(i32),
    CoordinatorLost(String),
}

/// What the watch of a generation reacts to.
enum Event {
    /// Local rank `.0` exited with code `.1` (`-signal` for a death by signal).
    Exit(usize, i32),
    Command(Result<Option<rankforge_proto::Command>, tonic::Status>),
    /// Hostfile mode: the launcher on host `.0` exited with code `.1`.
    Remote(String, i32),
    Usr2,
    Interrupt,
    /// SIGTERM or SIGUSR1: stop at a step boundary (a second one stops at once).
    Stop(i32),
}

/// After an outcome: start the next generation, or exit with a code.
enum Next {
    Restart(u64),
    Exit(i32),
}

/// This node's ranks in one generation.
struct Generation {
    number: u64,
    ranks: Vec<Rank>,
    exits: mpsc::UnboundedReceiver<(usize, i32)>,
    /// Local index → pid of the ranks still running.
    running: BTreeMap<usize, i32>,
    started: Instant,
    /// The first local failure of this generation is reported; later ones are its consequences.
    reported: bool,
    stopped_ranks: usize,
    /// Programs, after a forwarded SIGTERM/SIGUSR1: the first exit code other than 0 or 75.
    stop_code: Option<i32>,
}

/// A node's launcher once it reaches the coordinator.
struct Node<'a> {
    args: &'a Args,
    plan: &'a Plan,
    host: String,
    signals: Signals,
    /// Node 0: the coordinator it hosts.
    shared: Option<Arc<Shared>>,
    client: Client,
    coord_addr: String,
    local_addr: String,
    grace: Duration,
    join_timeout: Duration,
    /// Hostfile mode (node 0): exits of the launchers it started over ssh.
    remote_exits: mpsc::UnboundedReceiver<(String, i32)>,
    /// One command stream for the node's whole life (commands name their generation).
    commands: Option<tonic::Streaming<rankforge_proto::Command>>,
    /// After a first SIGTERM/SIGUSR1: ranks are checkpointing and will exit with EXIT_STOPPED
    /// (rankforge), or got the signal forwarded (programs).
    stopping: bool,
    /// Node 0: the MASTER_PORTs of earlier generations (a new one is picked for each).
    master_ports: Vec<u16>,
}

pub async fn run(args: &Args, plan: Plan) -> Result<i32> {
    let mut signals = Signals::new()?;
    let join_timeout = Duration::from_secs_f64(args.join_timeout.max(0.0));
    let shared = (plan.node_rank == 0).then(|| coordinator_state(args, &plan));
    let coord_addr = host_coordinator(&plan, &shared).await?;
    let remote_exits = watch_remotes(start_remotes(args, &plan, &coord_addr)?);
    let client = match signals.unless_stopped(crate::connect(&coord_addr, join_timeout)).await {
        Ok(client) => client?,
        Err(sig) => return Ok(stopped_while(sig, &format!("connecting to the coordinator at {coord_addr}"))),
    };
    let (chost, cport) = &plan.coordinator;
    let local_addr = plan.local_addr.clone().or_else(|| route_addr(chost, *cport)).unwrap_or_else(|| "127.0.0.1".into());
    std::fs::create_dir_all(&plan.log_dir).with_context(|| format!("cannot create the log directory {}", plan.log_dir.display()))?;
    let mut node = Node {
        args,
        plan: &plan,
        host: hostname(),
        signals,
        shared,
        client,
        coord_addr,
        local_addr,
        grace: Duration::from_secs_f64(args.grace_period.max(0.0)),
        join_timeout,
        remote_exits,
        commands: None,
        stopping: false,
        master_ports: Vec::new(),
    };
    node.run().await
}

/// Node 0's coordinator state, from the flags.
fn coordinator_state(args: &Args, plan: &Plan) -> Arc<Shared> {
    let mut st = State::new(plan.token.clone(), plan.nnodes);
    st.min_nodes = plan.min_nodes;
    st.last_call = Duration::from_secs_f64(args.last_call.max(0.0));
    st.max_restarts = args.max_restarts;
    st.heartbeat_timeout = (args.heartbeat_timeout > 0.0).then(|| Duration::from_secs_f64(args.heartbeat_timeout));
    st.stall_timeout = (args.stall_timeout > 0.0).then(|| Duration::from_secs_f64(args.stall_timeout));
    Shared::new(st)
}

/// Node 0 serves the coordinator on exactly the address it was given. Returns the address
/// every node connects to.
async fn host_coordinator(plan: &Plan, shared: &Option<Arc<Shared>>) -> Result<String> {
    let (chost, cport) = &plan.coordinator;
    let Some(s) = shared else { return Ok(format!("{chost}:{cport}")) };
    let bound = crate::serve(chost, *cport, s.clone()).await?;
    s.clone().spawn_monitor();
    let nodes = if plan.min_nodes < plan.nnodes { format!("{} to {}", plan.min_nodes, plan.nnodes) } else { plan.nnodes.to_string() };
    eprintln!("rankforge-launch: coordinator listening on {bound} (job {}, {nodes} node(s))", plan.run_id);
    Ok(bound.to_string())
}

/// The exit codes of the launchers started over ssh, as they come.
fn watch_remotes(remotes: Vec<(String, tokio::process::Child)>) -> mpsc::UnboundedReceiver<(String, i32)> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (host, mut child) in remotes {
        let tx = tx.clone();
        tokio::spawn(async move {
            let code = child.wait().await.map(exit_code).unwrap_or(-1);
            let _ = tx.send((host, code));
        });
    }
    rx
}

impl Node<'_> {
    /// Generations until one ends the job: join, start the ranks, watch, conclude.
    async fn run(&mut self) -> Result<i32> {
        let mut generation = 0u64;
        let mut restart = 0u32;
        // The world of the previous round (printed again when membership changes).
        let mut last_world = None;
        loop {
            let joined = match self.join(generation).await? {
                Ok(joined) => joined,
                Err(code) => return Ok(code),
            };
            // A node joining an elastic job late learns the generation here.
            generation = joined.generation;
            self.subscribe(generation).await?;
            let mut gen = self.start_ranks(&joined)?;
            if self.plan.node_rank == 0 && last_world != Some(joined.world_size) {
                eprintln!(
                    "rankforge-launch: {} rank(s) on {} node(s), {} thread(s) per rank, logs in {}",
                    joined.world_size,
                    joined.nnodes,
                    self.plan.threads_per_rank,
                    self.plan.log_dir.display()
                );
            }
            last_world = Some(joined.world_size);
            let outcome = self.watch(&mut gen).await;
            match self.conclude(outcome, &mut gen, restart).await {
                Next::Restart(next) => {
                    generation = next;
                    restart += 1;
                }
                Next::Exit(code) => {
                    for r in &mut gen.ranks {
                        drain(&mut r.pumps).await;
                    }
                    let _ = std::io::stdout().flush();
                    return Ok(code);
                }
            }
        }
    }

    /// Joins the rendezvous round of `generation`. `Ok(Err(code))`: a signal stopped the wait.
    async fn join(&mut self, generation: u64) -> Result<std::result::Result<JoinNodeReply, i32>> {
        let plan = self.plan;
        let mut req = JoinNodeRequest { auth: auth(&plan.token, generation), node_rank: plan.node_rank, nproc: plan.nproc, host: self.host.clone(), ..Default::default() };
        if plan.node_rank == 0 {
            // Node 0's address as the other nodes reach it, and a port nobody used before.
            let host = &plan.coordinator.0;
            let port = free_port(host, &self.master_ports).with_context(|| format!("cannot find a free port on {host} for MASTER_PORT"))?;
            self.master_ports.push(port);
            (req.master_addr, req.master_port) = (host.clone(), port as u32);
        }
        let join = self.client.join_node(req);
        let joined = match self.signals.unless_stopped(tokio::time::timeout(self.join_timeout, join)).await {
            Ok(joined) => joined,
            Err(sig) => return Ok(Err(stopped_while(sig, "waiting for the other nodes to join"))),
        };
        let joined = joined
            .map_err(|_| anyhow!("not every node joined within {:.0} s (--join-timeout): {} node(s) expected", self.join_timeout.as_secs_f64(), plan.min_nodes))?
            .map_err(|s| anyhow!("the coordinator at {} refused this node: {}", self.coord_addr, s.message()))?;
        Ok(Ok(joined.into_inner()))
    }

    /// Opens the node's command stream once (it lives as long as the node).
    async fn subscribe(&mut self, generation: u64) -> Result<()> {
        if self.commands.is_some() {
            return Ok(());
        }
        let req = CommandsRequest { auth: auth(&self.plan.token, generation), rank: -1, node_rank: self.plan.node_rank };
        let stream = self.client.commands(req).await.map_err(|s| anyhow!("coordinator at {}: {}", self.coord_addr, s.message()))?;
        self.commands = Some(stream.into_inner());
        Ok(())
    }

    /// Starts this node's ranks of the round `joined`.
    fn start_ranks(&self, joined: &JoinNodeReply) -> Result<Generation> {
        let spec = GenerationSpec {
            generation: joined.generation,
            restart: joined.restart_count,
            world: joined.world_size,
            group_rank: joined.group_rank,
            nnodes: joined.nnodes,
            coord_addr: &self.coord_addr,
            local_addr: &self.local_addr,
            master_addr: &joined.master_addr,
            master_port: joined.master_port,
        };
        let (exit_tx, exits) = mpsc::unbounded_channel::<(usize, i32)>();
        let mut ranks = Vec::new();
        for local in 0..self.plan.nproc as usize {
            let global = joined.rank_offset + local as u32;
            let r = spawn_rank(self.args, self.plan, local, global, &spec, exit_tx.clone())
                .with_context(|| format!("cannot start rank {global} ({})", self.plan.rank_binary.display()))?;
            ranks.push(r);
        }
        let running = ranks.iter().enumerate().map(|(i, r)| (i, r.pid)).collect();
        Ok(Generation { number: joined.generation, ranks, exits, running, started: Instant::now(), reported: false, stopped_ranks: 0, stop_code: None })
    }

    /// A report about this node (`rank` -1) or one of its ranks, in `generation`.
    fn report(&self, generation: u64, rank: i32, success: bool, code: i32, message: String) -> ReportRequest {
        ReportRequest {
            auth: auth(&self.plan.token, generation),
            rank,
            node_rank: self.plan.node_rank,
            success,
            exit_code: code,
            host: self.host.clone(),
            message,
            timestamp: now(),
        }
    }

    /// Watches one generation until something ends it.
    async fn watch(&mut self, gen: &mut Generation) -> Outcome {
        loop {
            let event = self.next_event(gen).await;
            if let Some(outcome) = self.on_event(event, gen).await {
                return outcome;
            }
        }
    }

    async fn next_event(&mut self, gen: &mut Generation) -> Event {
        let commands = self.commands.as_mut().expect("subscribed before the ranks start");
        let signals = &mut self.signals;
        tokio::select! {
            Some((local, code)) = gen.exits.recv() => Event::Exit(local, code),
            msg = commands.message() => Event::Command(msg),
            Some((host, code)) = self.remote_exits.recv(), if self.plan.node_rank == 0 => Event::Remote(host, code),
            _ = signals.usr2.recv() => Event::Usr2,
            _ = signals.int.recv() => Event::Interrupt,
            _ = signals.term.recv() => Event::Stop(libc::SIGTERM),
            _ = signals.usr1.recv() => Event::Stop(libc::SIGUSR1),
        }
    }

    /// Acts on one event; `Some` when it ends the generation.
    async fn on_event(&mut self, event: Event, gen: &mut Generation) -> Option<Outcome> {
        match event {
            Event::Exit(local, code) => self.on_exit(gen, local, code).await,
            Event::Command(Ok(Some(cmd))) => match command::Kind::try_from(cmd.kind) {
                Ok(command::Kind::Abort) => Some(Outcome::Aborted(cmd.reason, cmd.exit_code, cmd.dead_ranks)),
                Ok(command::Kind::Restart) if cmd.generation > gen.number => Some(Outcome::Restart(cmd.generation, cmd.reason, cmd.dead_ranks)),
                Ok(command::Kind::Stop) if self.plan.program && !self.stopping => {
                    // Another node's launcher was signalled: its programs got it, so do these.
                    self.stopping = true;
                    let sig = if cmd.signal > 0 { cmd.signal } else { libc::SIGTERM };
                    eprintln!("rankforge-launch: {} (STOP: {}): forwarded to this node's ranks", signal_name(sig), cmd.reason);
                    forward(&gen.running, sig);
                    None
                }
                _ => None,
            },
            Event::Command(Ok(None)) => Some(Outcome::CoordinatorLost("it closed the command stream".into())),
            Event::Command(Err(s)) => Some(Outcome::CoordinatorLost(s.message().to_string())),
            Event::Remote(rhost, code) => {
                if code != 0 && !gen.reported {
                    gen.reported = true;
                    let req = self.report(gen.number, -1, false, code, format!("the launcher on {rhost} exited with code {code}"));
                    let _ = self.client.report(req).await;
                }
                None
            }
            Event::Usr2 => {
                match &self.shared {
                    Some(s) => {
                        eprintln!("rankforge-launch: SIGUSR2: asking every rank to checkpoint at the next step boundary");
                        s.broadcast(command::Kind::Checkpoint, "SIGUSR2 to the launcher");
                    }
                    None => eprintln!("rankforge-launch: SIGUSR2 ignored: send it to node 0's launcher, which hosts the coordinator"),
                }
                None
            }
            Event::Interrupt => Some(Outcome::Signal(libc::SIGINT)),
            Event::Stop(sig) => self.on_stop_signal(gen, sig).await,
        }
    }

    /// A local rank exited: success, a stop after a checkpoint, or a failure to report.
    async fn on_exit(&mut self, gen: &mut Generation, local: usize, code: i32) -> Option<Outcome> {
        gen.running.remove(&local);
        if self.stopping && self.plan.program && !gen.reported {
            // After the forwarded signal any exit is the program's way of stopping.
            if code != 0 && code != EXIT_STOPPED && gen.stop_code.is_none() {
                gen.stop_code = Some(launcher_code(code));
            }
            return gen.running.is_empty().then(|| Outcome::Stopped(gen.stop_code.unwrap_or(EXIT_STOPPED)));
        }
        if code == EXIT_STOPPED {
            gen.stopped_ranks += 1;
            return (gen.running.is_empty() && !gen.reported).then_some(Outcome::Stopped(EXIT_STOPPED));
        }
        if code == 0 {
            let req = self.report(gen.number, gen.ranks[local].global as i32, true, 0, String::new());
            let _ = self.client.report(req).await;
            let done = gen.running.is_empty() && !gen.reported;
            return done.then_some(if gen.stopped_ranks > 0 { Outcome::Stopped(EXIT_STOPPED) } else { Outcome::AllSucceeded });
        }
        if gen.reported {
            return None;
        }
        gen.reported = true;
        drain(&mut gen.ranks[local].pumps).await;
        let r = &gen.ranks[local];
        let tail = r.tail();
        let what = match code {
            c if c < 0 => format!("killed by {} (signal {})", signal_name(-c), -c),
            c => format!("exit code {c}"),
        };
        let path = error_file(self.plan, r.global);
        let error = ensure_error_file(&path, r.pid, code, &tail);
        let msg = format!("pid {}, {what}: {}; log {}", r.pid, error.message, r.log.display());
        // The traceback the rank wrote (torch's @record), else the end of its log.
        let detail = if !error.traceback.is_empty() {
            format!("{msg}\n    traceback (the end of {}):\n    | {}", path.display(), error.traceback.join("\n    | "))
        } else if tail.is_empty() {
            msg
        } else {
            format!("{msg}\n    | {}", tail.join("\n    | "))
        };
        eprintln!("rankforge-launch: rank {} failed ({what}); waiting for the coordinator's decision", r.global);
        let req = self.report(gen.number, r.global as i32, false, code, detail);
        match self.client.report(req).await {
            Ok(_) => None,
            Err(_) => Some(Outcome::CoordinatorLost("it did not take the failure report".into())),
        }
    }

    /// SIGTERM or SIGUSR1: the first asks every rank, through the coordinator, to checkpoint
    /// at the next step boundary and exit (programs get the signal forwarded, here and by the
    /// other nodes' launchers); a second one stops at once.
    async fn on_stop_signal(&mut self, gen: &Generation, sig: i32) -> Option<Outcome> {
        if self.stopping {
            return Some(Outcome::Signal(sig));
        }
        self.stopping = true;
        if self.plan.program {
            forward(&gen.running, sig);
            eprintln!(
                "rankforge-launch: {}: forwarded to every rank (a program may checkpoint, then exit 0 or {EXIT_STOPPED}); send it again to stop at once",
                signal_name(sig)
            );
        } else {
            eprintln!(
                "rankforge-launch: {}: every rank checkpoints at the next step boundary and exits ({EXIT_STOPPED}); send it again to stop at once",
                signal_name(sig)
            );
        }
        let reason = format!("{} to the launcher on {}", signal_name(sig), self.host);
        let req = StopRequest { auth: auth(&self.plan.token, gen.number), reason, signal: sig };
        match self.client.stop(req).await {
            Ok(_) => None,
            Err(_) => Some(Outcome::Signal(sig)),
        }
    }

    /// The ranks of this node among `dead` (declared dead by the coordinator): SIGKILLed at
    /// once in teardown.
    fn dead_here(gen: &Generation, dead: &[u32]) -> BTreeSet<usize> {
        let here: BTreeSet<usize> =
            gen.ranks.iter().enumerate().filter(|(i, r)| dead.contains(&r.global) && gen.running.contains_key(i)).map(|(i, _)| i).collect();
        for i in &here {
            eprintln!("rankforge-launch: rank {} (pid {}) sent no heartbeat: killing it at once (SIGKILL)", gen.ranks[*i].global, gen.ranks[*i].pid);
        }
        here
    }

    /// What follows `outcome`: the ranks are stopped where needed, then the node restarts them
    /// as the next generation or exits.
    async fn conclude(&mut self, outcome: Outcome, gen: &mut Generation, restart: u32) -> Next {
        match outcome {
            Outcome::Restart(next, reason, dead) => self.restart(gen, next, &reason, &dead, restart).await,
            Outcome::Stopped(code) => {
                let req = self.report(gen.number, -1, true, 0, String::new());
                let _ = self.client.report(req).await;
                if let Some(shared) = &self.shared {
                    if let Err(sig) = self.signals.unless_stopped(wait_for_nodes(shared, self.join_timeout)).await {
                        return Next::Exit(stopped_while(sig, "waiting for the other nodes to stop"));
                    }
                }
                if code != EXIT_STOPPED {
                    eprintln!("rankforge-launch: stopped on request; a rank did not exit 0 or {EXIT_STOPPED} after the forwarded signal: exit {code}");
                    return Next::Exit(code);
                }
                if self.plan.program {
                    eprintln!("rankforge-launch: stopped on request: every rank exited 0 or {EXIT_STOPPED} after the forwarded signal");
                } else {
                    eprintln!("rankforge-launch: stopped after a checkpoint at a step boundary; rerun the same command to resume");
                }
                if self.plan.node_rank == 0 {
                    requeue(self.args, self.plan).await;
                }
                Next::Exit(EXIT_STOPPED)
            }
            Outcome::AllSucceeded => {
                let req = self.report(gen.number, -1, true, 0, String::new());
                let _ = self.client.report(req).await;
                let Some(shared) = &self.shared else { return Next::Exit(0) };
                match self.signals.unless_stopped(wait_for_nodes(shared, self.join_timeout)).await {
                    Ok(code) => Next::Exit(code),
                    Err(sig) => Next::Exit(stopped_while(sig, "waiting for the other nodes to finish")),
                }
            }
            Outcome::Aborted(reason, code, dead) => {
                let kill_now = Self::dead_here(gen, &dead);
                teardown(&mut gen.running, &mut gen.exits, self.grace, &kill_now).await;
                eprintln!("rankforge-launch: job failed; root cause: {reason}");
                Next::Exit(launcher_code(code))
            }
            Outcome::Signal(sig) => {
                eprintln!("rankforge-launch: received {}: stopping all ranks", signal_name(sig));
                let req = self.report(gen.number, -1, false, -sig, format!("the launcher received {}", signal_name(sig)));
                let _ = self.client.report(req).await;
                teardown(&mut gen.running, &mut gen.exits, self.grace, &BTreeSet::new()).await;
                Next::Exit(128 + sig)
            }
            Outcome::CoordinatorLost(why) => {
                teardown(&mut gen.running, &mut gen.exits, self.grace, &BTreeSet::new()).await;
                eprintln!("rankforge-launch: lost the coordinator at {} ({why}): stopped this node's ranks", self.coord_addr);
                Next::Exit(1)
            }
        }
    }

    /// The job restarts as generation `next`: stop this node's ranks and, after a crash loop's
    /// back-off, start again.
    async fn restart(&mut self, gen: &mut Generation, next: u64, reason: &str, dead: &[u32], restart: u32) -> Next {
        let kill_now = Self::dead_here(gen, dead);
        teardown(&mut gen.running, &mut gen.exits, self.grace, &kill_now).await;
        for r in &mut gen.ranks {
            drain(&mut r.pumps).await;
        }
        // A crash loop backs off: restarts after a generation that lived under 30 s wait
        // 1, 2, 4 … 30 s (the first restart is immediate).
        let lived = gen.started.elapsed();
        let wait = if restart == 0 || lived > Duration::from_secs(30) { 0 } else { (1u64 << (restart - 1).min(5)).min(30) };
        eprintln!(
            "rankforge-launch: restarting this node's ranks as generation {next}{}",
            if wait > 0 { format!(" in {wait} s (crash loop back-off)") } else { String::new() }
        );
        if self.plan.node_rank != 0 {
            eprintln!("rankforge-launch: {reason}"); // node 0's coordinator printed it there
        }
        match self.signals.unless_stopped(tokio::time::sleep(Duration::from_secs(wait))).await {
            Ok(()) => Next::Restart(next),
            Err(sig) => Next::Exit(stopped_while(sig, "waiting to restart (crash loop back-off)")),
        }
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

/// A free port on `host` not among `used` (MASTER_PORT: the coordinator's own port is taken,
/// so it is never chosen). The listener closes at once; the program's rank 0 binds it next.
fn free_port(host: &str, used: &[u16]) -> std::io::Result<u16> {
    let mut held = Vec::new(); // keeps a used port bound, so the next bind gets another
    for _ in 0..64 {
        let l = std::net::TcpListener::bind((host, 0))?;
        let port = l.local_addr()?.port();
        if !used.contains(&port) {
            return Ok(port);
        }
        held.push(l);
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "every port tried was used before"))
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
