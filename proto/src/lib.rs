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

/// Exit code of a rank (and of the launcher) that stopped on request at a step boundary after
/// writing a checkpoint (preemption): sysexits' EX_TEMPFAIL, "try again later". Rerunning the
/// same command resumes.
pub const EXIT_STOPPED: i32 = 75;

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
