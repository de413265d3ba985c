//! The signals the launcher acts on, and its exit code when one stops it before any rank runs.

use std::future::Future;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

/// The signals the launcher acts on, registered before its first wait: once tokio handles one,
/// its default action is gone, so every wait must also watch them.
pub(crate) struct Signals {
    pub int: Signal,
    pub term: Signal,
    pub usr1: Signal,
    pub usr2: Signal,
}

impl Signals {
    pub fn new() -> Result<Signals> {
        let on = |kind| signal(kind).context("cannot install the launcher's signal handlers");
        Ok(Signals {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            usr1: on(SignalKind::user_defined1())?,
            usr2: on(SignalKind::user_defined2())?,
        })
    }

    /// Runs `fut` (a wait while no rank of this node runs: connecting, rendezvous, back-off)
    /// unless SIGINT, SIGTERM or SIGUSR1 comes first: `Err(signal)` then. SIGUSR2 (checkpoint)
    /// has nothing to act on meanwhile and is ignored.
    pub async fn unless_stopped<T>(&mut self, fut: impl Future<Output = T>) -> std::result::Result<T, i32> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                v = &mut fut => return Ok(v),
                _ = self.int.recv() => return Err(libc::SIGINT),
                _ = self.term.recv() => return Err(libc::SIGTERM),
                _ = self.usr1.recv() => return Err(libc::SIGUSR1),
                _ = self.usr2.recv() => eprintln!("rankforge-launch: SIGUSR2 ignored: no rank is running on this node"),
            }
        }
    }
}

/// The launcher's exit code for a signal that stopped it while none of its ranks ran.
pub(crate) fn stopped_while(sig: i32, what: &str) -> i32 {
    eprintln!("rankforge-launch: received {} while {what}: stopped (no rank was running)", signal_name(sig));
    128 + sig
}
