//! The rank's side of the control plane: join, barriers with payloads, heartbeats in the
//! background, and the coordinator's command stream (checkpoint now, stop, abort).
//!
//! The rank's training loop is synchronous; gRPC runs on a small tokio runtime owned here.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rankforge_proto::coordinator_client::CoordinatorClient;
use rankforge_proto::{auth, command, BarrierRequest, ConnectError, CommandsRequest, HeartbeatRequest, JoinReply, JoinRequest, Phase};
use tonic::transport::Channel;

use crate::error::{Error, Result};

/// What the heartbeat reports; updated by the training loop and the collective.
#[derive(Default)]
pub struct RankStatus {
    pub step: AtomicU64,
    pub collective_seq: AtomicU64,
    phase: AtomicU8,
    /// Set by a `STOP` command: checkpoint at the next step boundary, then exit.
    pub stop: AtomicBool,
    /// Set by a `CHECKPOINT` command: checkpoint at the next step boundary.
    pub checkpoint: AtomicBool,
}

impl RankStatus {
    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        Phase::try_from(self.phase.load(Ordering::Relaxed) as i32).unwrap_or(Phase::Unspecified)
    }
}

pub struct ControlPlane {
    rt: tokio::runtime::Runtime,
    client: CoordinatorClient<Channel>,
    addr: String,
    token: String,
    generation: u64,
    rank: u32,
    barriers: u64,
    pub status: Arc<RankStatus>,
}

fn status_error(addr: &str, what: &str, s: tonic::Status) -> Error {
    match s.code() {
        // The coordinator's verdict on our input (e.g. a different recipe): do not retry.
        tonic::Code::InvalidArgument => Error::Input(s.message().to_string()),
        tonic::Code::Aborted => Error::Dist(format!("{what}: {}", s.message())),
        _ => Error::Dist(format!("{what} (coordinator {addr}): {}", s.message())),
    }
}

impl ControlPlane {
    /// Connects to `addr`, retrying for up to `timeout`.
    pub fn connect(addr: &str, token: &str, generation: u64, rank: u32, timeout: Duration) -> Result<ControlPlane> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rankforge-control")
            .enable_all()
            .build()
            .map_err(|e| Error::Dist(format!("cannot start the control-plane runtime: {e}")))?;
        let client = rt.block_on(rankforge_proto::connect(addr, timeout)).map_err(|e| match e {
            ConnectError::BadAddress(why) => Error::Input(format!("RANKFORGE_COORDINATOR = {addr:?} is not an address: {why}")),
            ConnectError::Unreachable(why) => {
                Error::Dist(format!("cannot reach the coordinator at {addr} after {:.0} s: {why}", timeout.as_secs_f64()))
            }
        })?;
        Ok(ControlPlane {
            rt,
            client,
            addr: addr.to_string(),
            token: token.to_string(),
            generation,
            rank,
            barriers: 0,
            status: Arc::new(RankStatus::default()),
        })
    }

    /// Joins the rendezvous; returns when every rank has joined with the same recipe.
    pub fn join(&mut self, recipe_hash: &str, ring_addr: &str, host: &str) -> Result<JoinReply> {
        let req = JoinRequest {
            auth: auth(&self.token, self.generation),
            rank: self.rank,
            host: host.to_string(),
            recipe_hash: recipe_hash.to_string(),
            ring_addr: ring_addr.to_string(),
            pid: std::process::id(),
        };
        let mut client = self.client.clone();
        let reply = self.rt.block_on(client.join(req)).map_err(|s| status_error(&self.addr, "rendezvous", s))?;
        Ok(reply.into_inner())
    }

    /// Waits for every rank; returns each rank's `payload`, by rank.
    pub fn barrier(&mut self, name: &str, payload: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        self.barriers += 1;
        let req = BarrierRequest {
            auth: auth(&self.token, self.generation),
            rank: self.rank,
            name: format!("{name}#{}", self.barriers),
            payload,
        };
        let mut client = self.client.clone();
        let reply = self.rt.block_on(client.barrier(req)).map_err(|s| status_error(&self.addr, &format!("barrier {name}"), s))?;
        Ok(reply.into_inner().payloads)
    }

    /// Starts the heartbeat (every `every`) and the command listener in the background.
    pub fn start_background(&self, every: Duration) {
        let (token, generation, rank) = (self.token.clone(), self.generation, self.rank);
        let status = self.status.clone();
        let mut client = self.client.clone();
        self.rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let req = HeartbeatRequest {
                    auth: auth(&token, generation),
                    rank,
                    step: status.step.load(Ordering::Relaxed),
                    collective_seq: status.collective_seq.load(Ordering::Relaxed),
                    phase: status.phase() as i32,
                };
                if let Err(s) = client.heartbeat(req).await {
                    tracing::debug!("heartbeat refused: {}", s.message());
                }
            }
        });
        let (token, status, mut client) = (self.token.clone(), self.status.clone(), self.client.clone());
        self.rt.spawn(async move {
            let req = CommandsRequest { auth: auth(&token, generation), rank: rank as i32, node_rank: 0 };
            let Ok(stream) = client.commands(req).await else { return };
            let mut stream = stream.into_inner();
            while let Ok(Some(cmd)) = stream.message().await {
                match command::Kind::try_from(cmd.kind) {
                    Ok(command::Kind::Abort) => {
                        eprintln!("error: aborted by the coordinator: {}", cmd.reason);
                        // The training thread may be inside a kernel or an NCCL collective that
                        // will never complete: end the process without running exit handlers
                        // (libtorch's and CUDA's static destructors would race that thread).
                        // SAFETY: _exit only ends the process.
                        unsafe { libc::_exit(crate::error::EXIT_RUNTIME) }
                    }
                    Ok(command::Kind::Stop) => status.stop.store(true, Ordering::SeqCst),
                    Ok(command::Kind::Checkpoint) => status.checkpoint.store(true, Ordering::SeqCst),
                    _ => {}
                }
            }
        });
    }
}
