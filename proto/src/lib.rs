//! The rankforge control-plane protocol: the gRPC `Coordinator` service (rendezvous,
//! heartbeats, barriers, failure reports, server→rank commands) that node 0's
//! `rankforge-launch` hosts and every launcher and rank talks to.
//!
//! The definition is `proto/rankforge/v1/coordinator.proto`; `build.rs` compiles it with protox,
//! so no system `protoc` is needed.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("rankforge.v1");
}

pub use v1::*;

// Exit codes, defined once for `rankforge` (its ranks) and `rankforge-launch` (which decides
// from them whether a restart can help).

/// Failures while running (I/O, libtorch, a broken peer). A restart from a checkpoint may help.
pub const EXIT_RUNTIME: i32 = 1;

/// Bad input: recipe, data, tokenizer, model files, prompt, flags. Retrying cannot help, so
/// launchers never restart it.
pub const EXIT_BAD_INPUT: i32 = 2;

/// `rankforge push` (and a run's upload to the Hugging Face Hub) when the Hub stayed
/// unreachable or kept failing after the retries: sysexits' EX_UNAVAILABLE. Nothing local was
/// changed (a run's `final/` is complete); rerun `rankforge push` later. Launchers do not
/// restart it: training is finished.
pub const EXIT_HUB_UNAVAILABLE: i32 = 69;

/// A full disk or an exhausted quota (ENOSPC, EDQUOT; sysexits' EX_IOERR). What was being
/// written is discarded and the last complete checkpoint is intact; a restart would fail the
/// same way until space is freed, so launchers do not retry it.
pub const EXIT_NO_SPACE: i32 = 74;

/// A rank (and the launcher) that stopped on request at a step boundary after writing a
/// checkpoint (preemption): sysexits' EX_TEMPFAIL, "try again later". Rerunning the same
/// command resumes.
pub const EXIT_STOPPED: i32 = 75;

/// Exit codes a launcher never retries.
pub const EXIT_NOT_RETRIED: [i32; 3] = [EXIT_BAD_INPUT, EXIT_NO_SPACE, EXIT_HUB_UNAVAILABLE];

/// Environment variables the launcher hands to every rank (besides torchrun's).
pub mod env {
    /// `host:port` of the coordinator.
    pub const COORDINATOR: &str = "RANKFORGE_COORDINATOR";
    /// The per-job secret every RPC carries.
    pub const JOB_TOKEN: &str = "RANKFORGE_JOB_TOKEN";
    /// The generation (restart round) the rank belongs to.
    pub const GENERATION: &str = "RANKFORGE_GENERATION";
    /// The address this node advertises to peers (CPU ring listeners bind to it).
    pub const LOCAL_ADDR: &str = "RANKFORGE_LOCAL_ADDR";
    /// Seconds between a rank's heartbeats.
    pub const HEARTBEAT_INTERVAL: &str = "RANKFORGE_HEARTBEAT_INTERVAL";
    /// Seconds a client keeps retrying an unreachable coordinator.
    pub const JOIN_TIMEOUT: &str = "RANKFORGE_JOIN_TIMEOUT";
}

/// gRPC metadata is not used for auth: the token travels in every request's `Auth`, so a
/// message logged or replayed without it is refused the same way.
pub fn auth(token: &str, generation: u64) -> Option<Auth> {
    Some(Auth { token: token.to_string(), generation })
}

/// This host's name, as launchers and ranks report it to the coordinator.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// Why [`connect`] failed.
#[derive(Debug)]
pub enum ConnectError {
    /// `addr` is not a usable address.
    BadAddress(String),
    /// Nothing answered at `addr` within the timeout (the message says why, one line).
    Unreachable(String),
}

/// Connects to the coordinator at `addr` (`host:port`), retrying for up to `timeout`: the
/// launchers and ranks of a job start in any order.
pub async fn connect(
    addr: &str,
    timeout: std::time::Duration,
) -> Result<coordinator_client::CoordinatorClient<tonic::transport::Channel>, ConnectError> {
    let endpoint = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| ConnectError::BadAddress(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(2));
    let started = std::time::Instant::now();
    loop {
        match endpoint.connect().await {
            Ok(ch) => return Ok(coordinator_client::CoordinatorClient::new(ch)),
            Err(e) if started.elapsed() >= timeout => return Err(ConnectError::Unreachable(error_chain(&e))),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}
