//! The job's coordinator: a pure state machine ([`State`]) and the gRPC service around it
//! ([`Service`]), hosted by node 0's launcher.
//!
//! Rendezvous runs in two rounds: the launchers (`JoinNode`: how many ranks each node starts),
//! then the ranks (`Join`: where each rank's ring listens, which recipe it runs). Blocking calls
//! (the two joins and `Barrier`) wait on a change counter and give up with `ABORTED` as soon as
//! the job has failed, so no client waits on a job that is already lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rankforge_proto::{command, coordinator_server, Auth, Command, Phase};
use rankforge_proto::{
    BarrierReply, BarrierRequest, CommandsRequest, HeartbeatReply, HeartbeatRequest, JoinNodeReply,
    JoinNodeRequest, JoinReply, JoinRequest, ReportReply, ReportRequest, StopReply, StopRequest,
};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

/// Where the job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    /// Nodes and ranks are joining.
    Assembling,
    /// Every rank has joined; training.
    Running,
    /// Every node reported success.
    Done,
    /// A rank or node failed (see [`State::root_cause`]).
    Failed,
}

/// One rank's registration and latest heartbeat.
#[derive(Debug, Clone)]
pub struct RankInfo {
    pub host: String,
    pub pid: u32,
    pub recipe_hash: String,
    pub ring_addr: String,
    pub step: u64,
    pub collective_seq: u64,
    pub phase: Phase,
    pub last_seen: Instant,
    /// When `collective_seq` last changed (or the rank joined).
    pub seq_since: Instant,
}

/// A failure report.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The rank, or `None` for a node-level failure.
    pub rank: Option<u32>,
    pub node_rank: u32,
    pub host: String,
    /// Exit code, or `-signal` for a death by signal.
    pub exit_code: i32,
    pub message: String,
    pub timestamp: f64,
    /// Detected by the coordinator (missed heartbeats or a stall), not by an exit.
    pub unresponsive: bool,
    /// No heartbeat at all for the timeout: the process cannot act (frozen, hung), so its
    /// launcher SIGKILLs it at once instead of waiting the grace period after SIGTERM.
    pub silent: bool,
}

/// Exit code of a rank that failed on bad input (recipe, data): retrying cannot help, so the
/// job is not restarted (rankforge's `EXIT_BAD_INPUT`).
pub const EXIT_FATAL: i32 = 2;

/// Exit code of a rank whose disk is full (rankforge's `EXIT_NO_SPACE`, sysexits' EX_IOERR):
/// a restart would fail the same way until space is freed.
pub const EXIT_NO_SPACE: i32 = 74;

/// Exit code of a rank whose upload to the Hugging Face Hub failed after its retries
/// (`rankforge_proto::EXIT_HUB_UNAVAILABLE`, sysexits' EX_UNAVAILABLE): training finished and
/// `final/` is intact, so restarting would redo nothing useful; rerun `rankforge push`.
pub const EXIT_HUB_UNAVAILABLE: i32 = rankforge_proto::EXIT_HUB_UNAVAILABLE;

/// Exit codes that are never retried.
pub const FATAL_EXIT_CODES: [i32; 3] = [EXIT_FATAL, EXIT_NO_SPACE, EXIT_HUB_UNAVAILABLE];

fn fatal_meaning(code: i32) -> &'static str {
    match code {
        EXIT_NO_SPACE => "the disk is full (the last checkpoint is intact; free space, then rerun)",
        EXIT_HUB_UNAVAILABLE => "the Hugging Face Hub upload failed after its retries (final/ is intact; rerun `rankforge push`)",
        _ => "bad input (recipe, data)",
    }
}

/// What the coordinator does about a failed generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start `generation` (restart number `restart`) from the newest checkpoint.
    Restart { generation: u64, restart: u32, root: Failure },
    /// Elastic: nodes `lost` are gone; continue as `generation` with the `nodes` left (and any
    /// that asked to join), from the newest checkpoint. Uses up no restart.
    Rescale { generation: u64, lost: BTreeSet<u32>, nodes: u32, root: Failure },
    /// Give up: the root cause is fatal, or no restart is left.
    Abort { root: Failure, why: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rank {
            Some(r) => write!(f, "rank {r} on {} (node {})", self.host, self.node_rank)?,
            None => write!(f, "node {} ({})", self.node_rank, self.host)?,
        }
        match self.exit_code {
            _ if self.unresponsive => write!(f, " stopped responding")?,
            c if c < 0 => write!(f, " was killed by signal {}", -c)?,
            c => write!(f, " exited with code {c}")?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The coordinator's state. Methods are synchronous and socket-free; the service maps their
/// `Err(Status)` onto replies and waits (on [`Shared::changed`]) where a call must block.
#[derive(Debug)]
pub struct State {
    pub token: String,
    pub generation: u64,
    /// Most nodes a round admits (`--nnodes MIN:MAX`'s MAX; node ranks are below it).
    pub nnodes: u32,
    /// Fewest nodes the job runs with (`MIN`; equal to `nnodes` unless the job is elastic).
    pub min_nodes: u32,
    /// Elastic only: a round that has MIN nodes but not MAX closes this long after it reached
    /// MIN (torchrun's last call), unless every node it expects is in.
    pub last_call: Duration,
    pub phase: JobPhase,
    /// node rank → (nproc, host): the members of the current generation's round.
    pub nodes: BTreeMap<u32, (u32, String)>,
    /// The round admits no more nodes: `nodes` is this generation's membership.
    round_closed: bool,
    /// When the open round first had `min_nodes` nodes.
    round_min_since: Option<Instant>,
    /// After a restart: the nodes the new round waits for (the survivors and the nodes that
    /// asked to join meanwhile). None in the first round: it waits for MAX (or last call).
    expected: Option<BTreeSet<u32>>,
    /// Elastic: nodes that asked to join while a generation was running; they join at the
    /// next restart boundary. node rank → (nproc, host)
    pub waiting: BTreeMap<u32, (u32, String)>,
    pub world_size: Option<u32>,
    pub ranks: BTreeMap<u32, RankInfo>,
    /// Set once every rank has joined and the recipes agree (or the error that they do not).
    join_result: Option<Result<(), Status>>,
    /// barrier name → rank → payload
    barriers: HashMap<String, BTreeMap<u32, Vec<u8>>>,
    /// barrier name → ranks that have collected the result
    collected: HashMap<String, usize>,
    pub failures: Vec<Failure>,
    pub nodes_done: BTreeMap<u32, bool>,
    /// Restarts allowed for the whole job (`--max-restarts`), and used so far.
    pub max_restarts: u32,
    pub restarts: u32,
    /// A rank silent for longer than this is declared failed (None: never).
    pub heartbeat_timeout: Option<Duration>,
    /// No rank finishing a collective for this long, with nobody checkpointing, evaluating or
    /// setting up, is a stall; the rank that is behind is declared failed (None: never).
    pub stall_timeout: Option<Duration>,
    /// The decision about the current generation's failure, once made.
    pub decision: Option<Decision>,
    /// A decision is scheduled for the current generation.
    deciding: bool,
}

/// Equal-time comparison, so the token cannot be guessed byte by byte from reply timings.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl State {
    pub fn new(token: String, nnodes: u32) -> State {
        State {
            token,
            generation: 0,
            nnodes,
            min_nodes: nnodes,
            last_call: Duration::from_secs(30),
            phase: JobPhase::Assembling,
            nodes: BTreeMap::new(),
            round_closed: false,
            round_min_since: None,
            expected: None,
            waiting: BTreeMap::new(),
            world_size: None,
            ranks: BTreeMap::new(),
            join_result: None,
            barriers: HashMap::new(),
            collected: HashMap::new(),
            failures: Vec::new(),
            nodes_done: BTreeMap::new(),
            max_restarts: 0,
            restarts: 0,
            heartbeat_timeout: None,
            stall_timeout: None,
            decision: None,
            deciding: false,
        }
    }

    /// Refuses a missing or wrong token (`UNAUTHENTICATED`) and a generation other than the
    /// current one (`FAILED_PRECONDITION`).
    pub fn check(&self, auth: Option<&Auth>) -> Result<(), Status> {
        let auth = self.check_token(auth)?;
        if auth.generation != self.generation {
            return Err(Status::failed_precondition(format!(
                "stale generation {}: the job is at generation {} (it restarted; this process belongs to an earlier attempt)",
                auth.generation, self.generation
            )));
        }
        Ok(())
    }

    /// Refuses a missing or wrong token (`UNAUTHENTICATED`); the generation is the caller's
    /// business ([`State::check`] for every RPC but an elastic newcomer's `JoinNode`).
    fn check_token<'a>(&self, auth: Option<&'a Auth>) -> Result<&'a Auth, Status> {
        let Some(auth) = auth else {
            return Err(Status::unauthenticated("request carries no job token"));
        };
        if !same_token(&auth.token, &self.token) {
            return Err(Status::unauthenticated(
                "wrong job token: this process does not belong to this job (RANKFORGE_JOB_TOKEN differs)",
            ));
        }
        Ok(auth)
    }

    fn check_alive(&self) -> Result<(), Status> {
        match self.root_cause() {
            Some(f) => Err(Status::aborted(format!("the job failed: {f}"))),
            None => Ok(()),
        }
    }

    /// Whether the job runs with a varying number of nodes (`--nnodes MIN:MAX`, MIN < MAX).
    pub fn elastic(&self) -> bool {
        self.min_nodes < self.nnodes
    }

    /// Registers a node's launcher. `Ok(Some(reply))` once the round has closed with this node
    /// in it: at MAX nodes; after a restart, once every expected node is back (and at least MIN);
    /// or, elastic, `last_call` after the round reached MIN. A node that arrives while a
    /// generation runs waits for the next restart boundary (elastic) or is refused (static).
    pub fn join_node(&mut self, req: &JoinNodeRequest) -> Result<Option<JoinNodeReply>, Status> {
        // A newcomer to an elastic job does not know the generation: it enters the next round.
        let auth = self.check_token(req.auth.as_ref())?;
        if !(self.elastic() && auth.generation < self.generation) {
            self.check(req.auth.as_ref())?;
        }
        if let Some(Decision::Abort { root, .. }) = &self.decision {
            return Err(Status::aborted(format!("the job failed: {root}")));
        }
        if req.node_rank >= self.nnodes {
            return Err(Status::invalid_argument(format!(
                "node rank {} is out of range: the job has at most {} nodes (--node-rank must be below --nnodes)",
                req.node_rank, self.nnodes
            )));
        }
        if req.nproc == 0 {
            return Err(Status::invalid_argument(format!("node {} starts no ranks", req.node_rank)));
        }
        if self.round_closed {
            if !self.nodes.contains_key(&req.node_rank) {
                if !self.elastic() {
                    self.check_alive()?;
                    return Err(Status::already_exists(format!("node rank {} is not part of this job's round", req.node_rank)));
                }
                self.waiting.insert(req.node_rank, (req.nproc, req.host.clone()));
                return Ok(None);
            }
        } else {
            self.check_alive()?;
            match self.nodes.get(&req.node_rank) {
                Some((n, host)) if (*n, host) != (req.nproc, &req.host) => {
                    return Err(Status::already_exists(format!(
                        "node rank {} joined twice (from {host} and from {}): give each launcher its own --node-rank",
                        req.node_rank, req.host
                    )))
                }
                _ => {
                    self.nodes.insert(req.node_rank, (req.nproc, req.host.clone()));
                    self.waiting.remove(&req.node_rank);
                }
            }
            if !self.round_complete(Instant::now()) {
                return Ok(None);
            }
            self.round_closed = true;
            self.world_size = Some(self.nodes.values().map(|(n, _)| n).sum());
        }
        let world = self.world_size.expect("set when the round closed");
        let rank_offset = self.nodes.range(..req.node_rank).map(|(_, (n, _))| n).sum();
        let group_rank = self.nodes.range(..req.node_rank).count() as u32;
        Ok(Some(JoinNodeReply {
            generation: self.generation,
            world_size: world,
            rank_offset,
            nnodes: self.nodes.len() as u32,
            group_rank,
            restart_count: self.restarts,
        }))
    }

    /// Whether the open round can close now (see [`State::join_node`]).
    fn round_complete(&mut self, now: Instant) -> bool {
        let joined = self.nodes.len() as u32;
        if joined >= self.nnodes {
            return true;
        }
        if joined < self.min_nodes {
            return false;
        }
        if let Some(expected) = &self.expected {
            if expected.iter().all(|n| self.nodes.contains_key(n)) {
                return true;
            }
        }
        let since = *self.round_min_since.get_or_insert(now);
        now.duration_since(since) >= self.last_call
    }

    /// Registers a rank. `Ok(Some(reply))` once every rank is in and all run the same recipe.
    pub fn join(&mut self, req: &JoinRequest) -> Result<Option<JoinReply>, Status> {
        self.check(req.auth.as_ref())?;
        self.check_alive()?;
        let Some(world) = self.world_size else {
            return Err(Status::failed_precondition("ranks joined before their launchers did"));
        };
        if req.rank >= world {
            return Err(Status::invalid_argument(format!("rank {} is out of range: the world has {world} ranks", req.rank)));
        }
        if let Some(r) = self.ranks.get(&req.rank) {
            if r.pid != req.pid || r.host != req.host {
                return Err(Status::already_exists(format!(
                    "rank {} joined twice (pid {} on {} and pid {} on {})",
                    req.rank, r.pid, r.host, req.pid, req.host
                )));
            }
        }
        self.ranks.insert(
            req.rank,
            RankInfo {
                host: req.host.clone(),
                pid: req.pid,
                recipe_hash: req.recipe_hash.clone(),
                ring_addr: req.ring_addr.clone(),
                step: 0,
                collective_seq: 0,
                phase: Phase::Setup,
                last_seen: Instant::now(),
                seq_since: Instant::now(),
            },
        );
        if self.ranks.len() < world as usize {
            return Ok(None);
        }
        if self.join_result.is_none() {
            self.join_result = Some(self.recipes_agree());
            self.phase = JobPhase::Running;
        }
        self.join_result.clone().expect("set above")?;
        Ok(Some(JoinReply {
            rank: req.rank,
            world_size: world,
            generation: self.generation,
            peers: self.ranks.values().map(|r| r.ring_addr.clone()).collect(),
            hosts: self.ranks.values().map(|r| r.host.clone()).collect(),
        }))
    }

    fn recipes_agree(&self) -> Result<(), Status> {
        let reference = &self.ranks[&0];
        for (rank, r) in &self.ranks {
            if r.recipe_hash != reference.recipe_hash {
                return Err(Status::invalid_argument(format!(
                    "ranks were started with different recipes: rank 0 on {} runs recipe {}, rank {rank} on {} runs recipe {} \
                     (every node must get the same --config file contents and --set overrides)",
                    reference.host,
                    short(&reference.recipe_hash),
                    r.host,
                    short(&r.recipe_hash)
                )));
            }
        }
        Ok(())
    }

    pub fn heartbeat(&mut self, req: &HeartbeatRequest) -> Result<(), Status> {
        self.check(req.auth.as_ref())?;
        let Some(r) = self.ranks.get_mut(&req.rank) else {
            return Err(Status::failed_precondition(format!("rank {} sent a heartbeat before joining", req.rank)));
        };
        r.step = req.step;
        if r.collective_seq != req.collective_seq {
            r.seq_since = Instant::now();
        }
        r.collective_seq = req.collective_seq;
        r.phase = Phase::try_from(req.phase).unwrap_or(Phase::Unspecified);
        r.last_seen = Instant::now();
        Ok(())
    }

    /// Adds a rank to barrier `name`. `Ok(Some(payloads))` once every rank has arrived.
    pub fn barrier(&mut self, req: &BarrierRequest) -> Result<Option<Vec<Vec<u8>>>, Status> {
        self.check(req.auth.as_ref())?;
        self.check_alive()?;
        let world = self.world_size.unwrap_or(0);
        if req.rank >= world {
            return Err(Status::invalid_argument(format!("rank {} is out of range: the world has {world} ranks", req.rank)));
        }
        let arrived = self.barriers.entry(req.name.clone()).or_default();
        arrived.entry(req.rank).or_insert_with(|| req.payload.clone());
        if arrived.len() < world as usize {
            return Ok(None);
        }
        let payloads: Vec<Vec<u8>> = arrived.values().cloned().collect();
        Ok(Some(payloads))
    }

    /// A rank has its barrier result; the barrier is forgotten once every rank has.
    pub fn barrier_collected(&mut self, name: &str) {
        let n = self.collected.entry(name.to_string()).or_default();
        *n += 1;
        if *n >= self.world_size.unwrap_or(0) as usize {
            self.collected.remove(name);
            self.barriers.remove(name);
        }
    }

    /// Records a report; returns the root cause when the job has failed.
    pub fn report(&mut self, req: &ReportRequest) -> Result<Option<Failure>, Status> {
        self.check(req.auth.as_ref())?;
        if req.success {
            if let Some(r) = u32::try_from(req.rank).ok().and_then(|r| self.ranks.get_mut(&r)) {
                r.phase = Phase::Done; // exited cleanly: no heartbeat expected any more
            }
            if req.rank < 0 {
                self.nodes_done.insert(req.node_rank, true);
                if self.nodes_done.len() >= self.nodes.len() && self.failures.is_empty() {
                    self.phase = JobPhase::Done;
                }
            }
        } else {
            self.failures.push(Failure {
                rank: u32::try_from(req.rank).ok(),
                node_rank: req.node_rank,
                host: req.host.clone(),
                exit_code: req.exit_code,
                message: req.message.clone(),
                timestamp: req.timestamp,
                unresponsive: false,
                silent: false,
            });
            self.phase = JobPhase::Failed;
        }
        Ok(self.root_cause())
    }

    /// The failure with the smallest timestamp (torchelastic's root cause).
    pub fn root_cause(&self) -> Option<Failure> {
        self.failures.iter().min_by(|a, b| a.timestamp.total_cmp(&b.timestamp)).cloned()
    }

    /// Decides about the current generation's failures (call once the reports are in): restart
    /// from the newest checkpoint while restarts are left and the root cause is not fatal.
    pub fn decide(&mut self) -> Option<Decision> {
        if let Some(d) = &self.decision {
            return Some(d.clone());
        }
        let root = self.root_cause()?;
        let lost = self.lost_nodes();
        let d = if !lost.is_empty() {
            // A lost node takes its ranks along; the other ranks' failures are its consequences.
            let root = self.failures.iter().filter(|f| f.rank.is_none()).min_by(|a, b| a.timestamp.total_cmp(&b.timestamp)).cloned().unwrap_or(root);
            let left = self.nodes.keys().filter(|n| !lost.contains(n)).count() + self.waiting.len();
            let names = lost.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
            if !self.elastic() {
                Decision::Abort {
                    root,
                    why: "a node's launcher stopped; the job cannot continue without it (an elastic job, --nnodes MIN:MAX, would continue with the nodes left)".into(),
                }
            } else if (left as u32) < self.min_nodes {
                Decision::Abort { root, why: format!("node(s) {names} lost: {left} node(s) left, fewer than the minimum of {} (--nnodes)", self.min_nodes) }
            } else {
                // A membership change, not a failure of the training: no restart is used up.
                self.next_generation();
                return Some(Decision::Rescale { generation: self.generation, lost, nodes: left as u32, root });
            }
        } else if FATAL_EXIT_CODES.contains(&root.exit_code) && !root.unresponsive {
            let why = format!("exit code {} is not retried: {}", root.exit_code, fatal_meaning(root.exit_code));
            Decision::Abort { root, why }
        } else if self.restarts >= self.max_restarts {
            Decision::Abort { root, why: format!("no restart left ({} of --max-restarts {} used)", self.restarts, self.max_restarts) }
        } else {
            self.restarts += 1;
            self.next_generation();
            // The new generation starts without a decision.
            return Some(Decision::Restart { generation: self.generation, restart: self.restarts, root });
        };
        self.decision = Some(d.clone());
        Some(d)
    }

    /// Ranks of the current generation declared dead by missed heartbeats (see
    /// [`Failure::silent`]), for the RESTART or ABORT that ends it.
    pub fn dead_ranks(&self) -> Vec<u32> {
        let dead: BTreeSet<u32> = self.failures.iter().filter(|f| f.silent).filter_map(|f| f.rank).collect();
        dead.into_iter().collect()
    }

    /// Nodes of the current generation whose launcher failed or disconnected.
    pub fn lost_nodes(&self) -> BTreeSet<u32> {
        self.failures.iter().filter(|f| f.rank.is_none()).map(|f| f.node_rank).collect()
    }

    /// A launcher's command stream closed. Unless its node had finished (or the job is over),
    /// the node is lost: its ranks died with it (parent-death signal) or are unreachable.
    pub fn node_disconnected(&mut self, node_rank: u32, host: &str) -> bool {
        let member = self.nodes.contains_key(&node_rank);
        self.waiting.remove(&node_rank);
        if !member || self.nodes_done.contains_key(&node_rank) || matches!(self.phase, JobPhase::Done) || self.decision.is_some() {
            return false;
        }
        if self.failures.iter().any(|f| f.rank.is_none() && f.node_rank == node_rank) {
            return false;
        }
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.failures.push(Failure {
            rank: None,
            node_rank,
            host: host.to_string(),
            exit_code: -libc::SIGKILL,
            message: "its launcher disconnected from the coordinator (killed, crashed, or its host is unreachable)".into(),
            timestamp: wall,
            unresponsive: false,
            silent: false,
        });
        self.phase = JobPhase::Failed;
        true
    }

    /// Ranks whose last heartbeat (or join) is older than the timeout, as failures.
    pub fn unresponsive(&self, now: Instant) -> Vec<Failure> {
        let Some(limit) = self.heartbeat_timeout else { return Vec::new() };
        if self.phase != JobPhase::Running {
            return Vec::new();
        }
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.ranks
            .iter()
            .filter(|(_, r)| r.phase != Phase::Done && now.duration_since(r.last_seen) > limit)
            .map(|(rank, r)| {
                let silent = now.duration_since(r.last_seen);
                Failure {
                    rank: Some(*rank),
                    node_rank: self.node_of(*rank),
                    host: r.host.clone(),
                    exit_code: 0,
                    message: format!(
                        "no heartbeat for {:.1} s (limit {:.1} s); last seen at step {} in phase {}, after {} collectives (pid {})",
                        silent.as_secs_f64(),
                        limit.as_secs_f64(),
                        r.step,
                        phase_name(r.phase),
                        r.collective_seq,
                        r.pid
                    ),
                    timestamp: wall - silent.as_secs_f64() + limit.as_secs_f64(),
                    unresponsive: true,
                    silent: true,
                }
            })
            .collect()
    }

    /// A stalled collective: every rank alive, none has completed a collective for the stall
    /// timeout, and none is in a phase that legitimately keeps the others waiting (setup,
    /// checkpoint, eval). The culprit is the rank with the fewest collectives, or, when all
    /// have done as many, one that is not inside the collective (the others wait for it).
    pub fn stalled(&self, now: Instant) -> Option<Failure> {
        let limit = self.stall_timeout?;
        if self.phase != JobPhase::Running || self.ranks.is_empty() {
            return None;
        }
        let waiting_ok = |p: Phase| matches!(p, Phase::Setup | Phase::Checkpoint | Phase::Eval | Phase::Done | Phase::Unspecified);
        if self.ranks.values().any(|r| waiting_ok(r.phase) || now.duration_since(r.seq_since) <= limit) {
            return None;
        }
        let min_seq = self.ranks.values().map(|r| r.collective_seq).min()?;
        let (rank, r) = self
            .ranks
            .iter()
            .filter(|(_, r)| r.collective_seq == min_seq)
            .min_by_key(|(_, r)| (r.phase == Phase::Collective, r.step))?;
        let others: Vec<String> =
            self.ranks.iter().filter(|(q, _)| *q != rank).map(|(q, o)| format!("{q}: {} after {}", phase_name(o.phase), o.collective_seq)).collect();
        let stuck = now.duration_since(r.seq_since);
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        Some(Failure {
            rank: Some(*rank),
            node_rank: self.node_of(*rank),
            host: r.host.clone(),
            exit_code: 0,
            message: format!(
                "no collective has completed for {:.1} s (limit {:.1} s); this rank is behind: {} at step {} after {} collectives; the others ({})",
                stuck.as_secs_f64(),
                limit.as_secs_f64(),
                phase_name(r.phase),
                r.step,
                r.collective_seq,
                others.join(", ")
            ),
            timestamp: wall,
            unresponsive: true,
            silent: false,
        })
    }

    /// The node that runs global rank `rank` (ranks are numbered in node-rank order).
    pub fn node_of(&self, rank: u32) -> u32 {
        let mut first = 0;
        for (node, (nproc, _)) in &self.nodes {
            if rank < first + nproc {
                return *node;
            }
            first += nproc;
        }
        0
    }

    /// Starts generation + 1: forgets nodes, ranks, barriers and failures of the previous one.
    /// The new round expects the previous members less the lost nodes, plus the nodes that
    /// asked to join meanwhile.
    pub fn next_generation(&mut self) {
        let lost = self.lost_nodes();
        let mut expected: BTreeSet<u32> = self.nodes.keys().copied().filter(|n| !lost.contains(n)).collect();
        expected.extend(self.waiting.keys().copied());
        self.expected = Some(expected);
        self.round_closed = false;
        self.round_min_since = None;
        self.generation += 1;
        self.phase = JobPhase::Assembling;
        self.nodes.clear();
        self.world_size = None;
        self.decision = None;
        self.deciding = false;
        self.ranks.clear();
        self.join_result = None;
        self.barriers.clear();
        self.collected.clear();
        self.failures.clear();
        self.nodes_done.clear();
    }
}

fn phase_name(p: Phase) -> String {
    p.as_str_name().trim_start_matches("PHASE_").to_lowercase()
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// How long after a first failure report the coordinator waits for related reports.
pub const DECISION_WINDOW: Duration = Duration::from_millis(300);

/// The state plus what waiting callers and command subscribers need.
pub struct Shared {
    pub state: Mutex<State>,
    changed: watch::Sender<u64>,
    subscribers: Mutex<Vec<mpsc::Sender<Result<Command, Status>>>>,
}

impl Shared {
    pub fn new(state: State) -> Arc<Shared> {
        Arc::new(Shared { state: Mutex::new(state), changed: watch::channel(0).0, subscribers: Mutex::new(Vec::new()) })
    }

    /// The state, locked. A poisoned lock means a panic while it was held (a bug): there is no
    /// consistent state left to serve, so this panics too.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("coordinator state lock poisoned by an earlier panic")
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Sends `kind` to every subscribed rank and launcher.
    pub fn broadcast(&self, kind: command::Kind, reason: &str) {
        self.send(Command { kind: kind as i32, reason: reason.to_string(), exit_code: 0, generation: 0, dead_ranks: Vec::new() });
    }

    /// After a failure: waits a moment for the reports of its consequences (peers failing on a
    /// broken connection), so the root cause is the earliest of them, then restarts the job
    /// (RESTART to the launchers) or gives up (ABORT to everyone). Once per generation.
    pub fn schedule_decision(self: Arc<Self>) {
        {
            let mut st = self.lock();
            if st.deciding {
                return;
            }
            st.deciding = true;
        }
        tokio::spawn(async move {
            tokio::time::sleep(DECISION_WINDOW).await;
            let (decision, dead_ranks) = {
                let mut st = self.lock();
                let dead = st.dead_ranks(); // before `decide` moves to the next generation
                (st.decide(), dead)
            };
            match decision {
                Some(Decision::Restart { generation, restart, root }) => {
                    eprintln!("rankforge-launch: restart {restart} of {}, root cause: {root}", self.lock().max_restarts);
                    let cmd = Command {
                        kind: command::Kind::Restart as i32,
                        reason: format!("restart {restart} after: {root}"),
                        exit_code: root.exit_code,
                        generation,
                        dead_ranks: dead_ranks.clone(),
                    };
                    self.send(cmd);
                }
                Some(Decision::Rescale { generation, lost, nodes, root }) => {
                    let lost: Vec<String> = lost.iter().map(u32::to_string).collect();
                    eprintln!(
                        "rankforge-launch: node(s) {} lost ({root}); continuing with {nodes} node(s) as generation {generation} from the newest checkpoint",
                        lost.join(", ")
                    );
                    let cmd = Command {
                        kind: command::Kind::Restart as i32,
                        reason: format!("node(s) {} lost, continuing with {nodes} node(s): {root}", lost.join(", ")),
                        exit_code: root.exit_code,
                        generation,
                        dead_ranks: dead_ranks.clone(),
                    };
                    self.send(cmd);
                }
                Some(Decision::Abort { root, why }) => {
                    let cmd = Command {
                        kind: command::Kind::Abort as i32,
                        reason: format!("{root}\n    ({why})"),
                        exit_code: if root.unresponsive { 1 } else { root.exit_code },
                        generation: 0,
                        dead_ranks,
                    };
                    self.send(cmd);
                }
                None => {}
            }
            self.notify();
        });
    }

    /// Watches heartbeats: a rank silent for longer than the timeout fails its generation.
    pub fn spawn_monitor(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let found = {
                    let mut st = self.lock();
                    let now = Instant::now();
                    let mut late = st.unresponsive(now);
                    if late.is_empty() {
                        late.extend(st.stalled(now));
                    }
                    let new: Vec<Failure> = late.into_iter().filter(|f| !st.failures.iter().any(|g| g.rank == f.rank)).collect();
                    for f in &new {
                        eprintln!("rankforge-launch: {f}");
                    }
                    let found = !new.is_empty();
                    if found {
                        st.failures.extend(new);
                        st.phase = JobPhase::Failed;
                    }
                    found
                };
                if found {
                    self.clone().schedule_decision();
                }
            }
        });
    }

    fn send(&self, cmd: Command) {
        let mut subs = self.subscribers.lock().expect("subscriber list lock poisoned by an earlier panic");
        subs.retain(|tx| tx.try_send(Ok(cmd.clone())).is_ok() || !tx.is_closed());
    }

    /// Runs `step` under the lock until it yields a value, waiting for changes in between.
    /// Only the first attempt (which registers the caller) and the final one (a value or an
    /// error) announce a change:
    /// a retry that changes nothing must not wake the other waiters, or two waiters (or one
    /// and its own announcement) would wake each other forever and spin a core.
    async fn wait_for<T>(&self, mut step: impl FnMut(&mut State) -> Result<Option<T>, Status>) -> Result<T, Status> {
        let mut rx = self.changed.subscribe();
        let mut first = true;
        loop {
            rx.borrow_and_update();
            let done = {
                let mut st = self.lock();
                step(&mut st)
            };
            match done {
                // The final attempt, a value or a refusal, may have changed the state (a
                // recipe mismatch found by the last rank to join): wake the other waiters.
                Ok(Some(v)) => {
                    self.notify();
                    return Ok(v);
                }
                Err(e) => {
                    self.notify();
                    return Err(e);
                }
                Ok(None) => {}
            }
            if std::mem::take(&mut first) {
                self.notify();
            }
            // Re-check at least every second (and at once on any change).
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        }
    }

    /// A receiver that sees every later change of the state (mark it seen, read the state, wait).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// The tonic service.
#[derive(Clone)]
pub struct Service(pub Arc<Shared>);

type CommandStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Command, Status>> + Send>>;

#[tonic::async_trait]
impl coordinator_server::Coordinator for Service {
    async fn join_node(&self, req: Request<JoinNodeRequest>) -> Result<Response<JoinNodeReply>, Status> {
        let req = req.into_inner();
        self.0.wait_for(|st| st.join_node(&req)).await.map(Response::new)
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let req = req.into_inner();
        self.0.wait_for(|st| st.join(&req)).await.map(Response::new)
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        self.0.lock().heartbeat(&req.into_inner())?;
        Ok(Response::new(HeartbeatReply {}))
    }

    async fn barrier(&self, req: Request<BarrierRequest>) -> Result<Response<BarrierReply>, Status> {
        let req = req.into_inner();
        let payloads = self.0.wait_for(|st| st.barrier(&req)).await?;
        self.0.lock().barrier_collected(&req.name);
        Ok(Response::new(BarrierReply { payloads }))
    }

    async fn report(&self, req: Request<ReportRequest>) -> Result<Response<ReportReply>, Status> {
        let req = req.into_inner();
        let root = self.0.lock().report(&req)?;
        self.0.notify();
        if root.is_some() {
            self.0.clone().schedule_decision();
        }
        Ok(Response::new(ReportReply { failure: root.map(|f| f.to_string()).unwrap_or_default() }))
    }

    async fn stop(&self, req: Request<StopRequest>) -> Result<Response<StopReply>, Status> {
        let req = req.into_inner();
        self.0.lock().check(req.auth.as_ref())?;
        self.0.broadcast(command::Kind::Stop, &req.reason);
        Ok(Response::new(StopReply {}))
    }

    type CommandsStream = CommandStream;

    async fn commands(&self, req: Request<CommandsRequest>) -> Result<Response<CommandStream>, Status> {
        let req = req.into_inner();
        let aborted = {
            let st = self.0.lock();
            st.check(req.auth.as_ref())?;
            match &st.decision {
                Some(Decision::Abort { root, why }) => Some((root.clone(), why.clone())),
                _ => None,
            }
        };
        let (tx, rx) = mpsc::channel(16);
        if let Some((root, why)) = aborted {
            let reason = format!("{root}\n    ({why})");
            let _ = tx.try_send(Ok(Command { kind: command::Kind::Abort as i32, reason, exit_code: root.exit_code, generation: 0, dead_ranks: Vec::new() }));
        }
        if req.rank < 0 {
            // A launcher's stream lives as long as its node: when it closes early, the node is lost.
            let (shared, watched, node_rank) = (self.0.clone(), tx.clone(), req.node_rank);
            tokio::spawn(async move {
                watched.closed().await;
                let lost = {
                    let mut st = shared.lock();
                    let host = st.nodes.get(&node_rank).map(|(_, h)| h.clone()).unwrap_or_default();
                    let lost = st.node_disconnected(node_rank, &host);
                    if lost {
                        eprintln!("rankforge-launch: node {node_rank} ({host}): its launcher disconnected from the coordinator");
                    }
                    lost
                };
                if lost {
                    shared.notify();
                    shared.clone().schedule_decision();
                }
            });
        }
        self.0.subscribers.lock().expect("subscriber list lock poisoned by an earlier panic").push(tx);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests;
