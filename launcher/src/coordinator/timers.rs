//! [`Shared`]: the state behind a lock, the change counter blocking calls wait on, the command
//! subscribers, and the coordinator's timers (the decision window after a failure, the
//! heartbeat and stall monitor).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rankforge_proto::{command, Command};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::{Decision, Failure, JobPhase, State};

/// How long after a first failure report the coordinator waits for related reports.
pub const DECISION_WINDOW: Duration = Duration::from_millis(300);

/// The state plus what waiting callers and command subscribers need.
pub struct Shared {
    pub state: Mutex<State>,
    pub(super) changed: watch::Sender<u64>,
    pub(super) subscribers: Mutex<Vec<mpsc::Sender<Result<Command, Status>>>>,
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

    pub(super) fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Sends `kind` to every subscribed rank and launcher.
    pub fn broadcast(&self, kind: command::Kind, reason: &str) {
        self.send(Command { kind: kind as i32, reason: reason.to_string(), ..Command::default() });
    }

    /// Sends STOP to every subscribed rank and launcher: rankforge ranks checkpoint at the next
    /// step boundary and exit; launchers forward `signal` to programs that are not rankforge.
    pub fn broadcast_stop(&self, reason: &str, signal: i32) {
        self.send(Command { kind: command::Kind::Stop as i32, reason: reason.to_string(), signal, ..Command::default() });
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
                        signal: 0,
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
                        signal: 0,
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
                        signal: 0,
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

    pub(super) fn send(&self, cmd: Command) {
        let mut subs = self.subscribers.lock().expect("subscriber list lock poisoned by an earlier panic");
        subs.retain(|tx| tx.try_send(Ok(cmd.clone())).is_ok() || !tx.is_closed());
    }

    /// Runs `step` under the lock until it yields a value, waiting for changes in between.
    /// Only the first attempt (which registers the caller) and the final one (a value or an
    /// error) announce a change:
    /// a retry that changes nothing must not wake the other waiters, or two waiters (or one
    /// and its own announcement) would wake each other forever and spin a core.
    pub(super) async fn wait_for<T>(&self, mut step: impl FnMut(&mut State) -> Result<Option<T>, Status>) -> Result<T, Status> {
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
