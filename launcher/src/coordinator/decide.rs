//! What the coordinator concludes: a failed generation's [`Decision`] (restart, rescale,
//! abort), and the failures it detects itself (missed heartbeats, stalled collectives, a
//! launcher that disconnected).

use std::collections::BTreeSet;
use std::time::Instant;

use rankforge_proto::{Phase, EXIT_HUB_UNAVAILABLE, EXIT_NOT_RETRIED, EXIT_NO_SPACE};

use super::state::phase_name;
use super::{Failure, JobPhase, State};

fn not_retried_meaning(code: i32) -> &'static str {
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

impl State {
    /// from the newest checkpoint while restarts are left and the root cause is not fatal.
    pub fn decide(&mut self) -> Option<Decision> {
        if let Some(d) = &self.decision {
            return Some(d.clone());
        }
        let root = self.root_cause()?;
        let lost = self.lost_nodes();
        let d = if let Some(why) = &self.stop_requested {
            Decision::Abort { root, why: format!("the job is stopping ({why}): not restarted") }
        } else if !lost.is_empty() {
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
        } else if EXIT_NOT_RETRIED.contains(&root.exit_code) && !root.unresponsive {
            let why = format!("exit code {} is not retried: {}", root.exit_code, not_retried_meaning(root.exit_code));
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
        let wall = crate::rank::now();
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
        let wall = crate::rank::now();
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
        let wall = crate::rank::now();
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

}
