//! The coordinator's state machine: rendezvous rounds (nodes, then ranks), barriers, heartbeats
//! and failure reports. Synchronous and socket-free: [`super::Shared`] locks it and waits on its
//! changes, [`super::Service`] maps its `Err(Status)` onto gRPC replies. What the coordinator
//! concludes from failures (restart, rescale, abort; missed heartbeats, stalls) is in
//! `decide.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rankforge_proto::{Auth, Phase};
use rankforge_proto::{BarrierRequest, HeartbeatRequest, JoinNodeReply, JoinNodeRequest, JoinReply, JoinRequest, ReportRequest};
use tonic::Status;

use super::Decision;

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
/// `Err(Status)` onto replies and waits (on [`super::Shared`]'s changes) where a call must block.
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
    pub(super) round_closed: bool,
    /// When the open round first had `min_nodes` nodes.
    pub(super) round_min_since: Option<Instant>,
    /// After a restart: the nodes the new round waits for (the survivors and the nodes that
    /// asked to join meanwhile). None in the first round: it waits for MAX (or last call).
    pub(super) expected: Option<BTreeSet<u32>>,
    /// Node 0's MASTER_ADDR and MASTER_PORT for this generation (its `JoinNode`), handed to
    /// every node of the round.
    pub master: Option<(String, u32)>,
    /// Elastic: nodes that asked to join while a generation was running; they join at the
    /// next restart boundary. node rank → (nproc, host)
    pub waiting: BTreeMap<u32, (u32, String)>,
    pub world_size: Option<u32>,
    pub ranks: BTreeMap<u32, RankInfo>,
    /// Set once every rank has joined and the recipes agree (or the error that they do not).
    pub(super) join_result: Option<Result<(), Status>>,
    /// barrier name → rank → payload
    pub(super) barriers: HashMap<String, BTreeMap<u32, Vec<u8>>>,
    /// barrier name → ranks that have collected the result
    pub(super) collected: HashMap<String, usize>,
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
    /// A launcher got SIGTERM/SIGUSR1 (`Stop`): the job is being stopped, so a failure from now
    /// on (a peer of a program that exited on the signal) ends it instead of restarting it.
    pub stop_requested: Option<String>,
    /// A decision is scheduled for the current generation.
    pub(super) deciding: bool,
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
            master: None,
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
            stop_requested: None,
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

    pub(super) fn check_alive(&self) -> Result<(), Status> {
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
    /// and node 0 (which hosts the coordinator and names MASTER_ADDR/MASTER_PORT) in it: at MAX
    /// nodes; after a restart, once every expected node is back (and at least MIN); or,
    /// elastic, `last_call` after the round reached MIN. A node that arrives while a
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
                    if req.node_rank == 0 {
                        self.master = Some((req.master_addr.clone(), req.master_port));
                    }
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
            master_addr: self.master.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
            master_port: self.master.as_ref().map_or(0, |m| m.1),
        }))
    }

    /// Whether the open round can close now (see [`State::join_node`]).
    fn round_complete(&mut self, now: Instant) -> bool {
        // Node 0 hosts the coordinator and names MASTER_ADDR/MASTER_PORT: no round without it.
        if !self.nodes.contains_key(&0) {
            return false;
        }
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
        self.master = None;
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

pub(super) fn phase_name(p: Phase) -> String {
    p.as_str_name().trim_start_matches("PHASE_").to_lowercase()
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
