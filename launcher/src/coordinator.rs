//! The job's coordinator, hosted by node 0's launcher, split by concern:
//! - `state.rs`: the socket-free state machine ([`State`]);
//! - `decide.rs`: what it concludes from failures ([`Decision`]) and the failures it detects;
//! - `timers.rs`: [`Shared`], the lock, change counter, subscribers and async timers;
//! - `service.rs`: the tonic service ([`Service`]).
//!
//! Rendezvous runs in two rounds: the launchers (`JoinNode`: how many ranks each node starts),
//! then the ranks (`Join`: where each rank's ring listens, which recipe it runs). Blocking calls
//! (the two joins and `Barrier`) wait on a change counter and give up with `ABORTED` as soon as
//! the job has failed, so no client waits on a job that is already lost.

mod decide;
mod service;
mod state;
mod timers;

pub use decide::Decision;
pub use service::Service;
pub use state::{Failure, JobPhase, RankInfo, State};
pub use timers::{Shared, DECISION_WINDOW};

#[cfg(test)]
mod tests;
