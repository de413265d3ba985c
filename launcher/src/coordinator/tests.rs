//! Unit tests of the parent module.

use super::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use rankforge_proto::Phase;
use tonic::Status;
use rankforge_proto::{auth, EXIT_BAD_INPUT, EXIT_HUB_UNAVAILABLE, EXIT_NO_SPACE};
use rankforge_proto::{BarrierRequest, HeartbeatRequest, JoinNodeRequest, JoinRequest, ReportRequest};

fn node(token: &str, gen: u64, node_rank: u32, nproc: u32) -> JoinNodeRequest {
    JoinNodeRequest { auth: auth(token, gen), node_rank, nproc, host: format!("h{node_rank}"), ..Default::default() }
}

fn rank(token: &str, gen: u64, r: u32, hash: &str) -> JoinRequest {
    JoinRequest { auth: auth(token, gen), rank: r, host: "h".into(), recipe_hash: hash.into(), ring_addr: format!("a{r}"), pid: r }
}

#[test]
fn nodes_then_ranks_assemble_with_offsets_by_node_rank() {
    let mut st = State::new("t".into(), 2);
    assert!(st.join_node(&node("t", 0, 1, 3)).unwrap().is_none());
    let r0 = st.join_node(&node("t", 0, 0, 2)).unwrap().unwrap();
    assert_eq!((r0.world_size, r0.rank_offset), (5, 0));
    let r1 = st.join_node(&node("t", 0, 1, 3)).unwrap().unwrap();
    assert_eq!((r1.world_size, r1.rank_offset), (5, 2));
    assert_eq!([0, 1, 2, 4].map(|r| st.node_of(r)), [0, 0, 1, 1]);
    for r in 0..4 {
        assert!(st.join(&rank("t", 0, r, "abc")).unwrap().is_none());
    }
    let reply = st.join(&rank("t", 0, 4, "abc")).unwrap().unwrap();
    assert_eq!(reply.peers, ["a0", "a1", "a2", "a3", "a4"]);
    assert_eq!(st.phase, JobPhase::Running);
}

#[test]
fn wrong_token_and_stale_generation_are_refused() {
    let mut st = State::new("secret".into(), 1);
    let e = st.join_node(&node("guess", 0, 0, 1)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = st.join_node(&JoinNodeRequest { auth: None, ..node("", 0, 0, 1) }).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    st.next_generation();
    let e = st.join_node(&node("secret", 0, 0, 1)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("stale generation 0"), "{}", e.message());
    assert!(st.join_node(&node("secret", 1, 0, 1)).unwrap().is_some());
}

#[test]
fn different_recipes_are_refused_naming_both_ranks() {
    let mut st = State::new("t".into(), 1);
    st.join_node(&node("t", 0, 0, 2)).unwrap();
    assert!(st.join(&rank("t", 0, 1, "bbbbbbbbbbbbbbbb")).unwrap().is_none());
    let e = st.join(&rank("t", 0, 0, "aaaaaaaaaaaaaaaa")).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("rank 0 on h runs recipe aaaaaaaaaaaa, rank 1 on h runs recipe bbbbbbbbbbbb"), "{}", e.message());
    // The other rank gets the same answer.
    assert_eq!(st.join(&rank("t", 0, 1, "bbbbbbbbbbbbbbbb")).unwrap_err().message(), e.message());
}

#[test]
fn duplicate_node_rank_is_refused() {
    let mut st = State::new("t".into(), 2);
    st.join_node(&node("t", 0, 0, 1)).unwrap();
    let mut other = node("t", 0, 0, 1);
    other.host = "elsewhere".into();
    assert_eq!(st.join_node(&other).unwrap_err().code(), tonic::Code::AlreadyExists);
}

#[test]
fn barrier_gathers_payloads_by_rank_and_is_forgotten_after_collection() {
    let mut st = State::new("t".into(), 1);
    st.join_node(&node("t", 0, 0, 2)).unwrap();
    let b = |r: u32, p: &[u8]| BarrierRequest { auth: auth("t", 0), rank: r, name: "x#0".into(), payload: p.to_vec() };
    assert!(st.barrier(&b(1, b"one")).unwrap().is_none());
    assert_eq!(st.barrier(&b(0, b"zero")).unwrap().unwrap(), vec![b"zero".to_vec(), b"one".to_vec()]);
    st.barrier_collected("x#0");
    st.barrier_collected("x#0");
    assert!(st.barriers.is_empty());
}

#[test]
fn root_cause_is_the_earliest_failure_and_blocks_further_joins() {
    let mut st = State::new("t".into(), 1);
    st.join_node(&node("t", 0, 0, 2)).unwrap();
    let fail = |r: i32, code: i32, ts: f64| ReportRequest {
        auth: auth("t", 0),
        rank: r,
        node_rank: 0,
        success: false,
        exit_code: code,
        host: "h".into(),
        message: String::new(),
        timestamp: ts,
    };
    st.report(&fail(1, -15, 20.0)).unwrap();
    let root = st.report(&fail(0, 2, 10.0)).unwrap().unwrap();
    assert_eq!((root.rank, root.exit_code), (Some(0), 2));
    assert_eq!(root.to_string(), "rank 0 on h (node 0) exited with code 2");
    assert_eq!(st.phase, JobPhase::Failed);
    assert_eq!(st.join(&rank("t", 0, 0, "x")).unwrap_err().code(), tonic::Code::Aborted);
}

fn failed(st: &mut State, rank: i32, code: i32) {
    let req = ReportRequest {
        auth: auth("t", st.generation),
        rank,
        node_rank: 0,
        success: false,
        exit_code: code,
        host: "h".into(),
        message: String::new(),
        timestamp: 1.0,
    };
    st.report(&req).unwrap();
}

#[test]
fn restarts_are_counted_for_the_job_and_bad_input_is_never_retried() {
    let mut st = State::new("t".into(), 1);
    st.max_restarts = 2;
    st.join_node(&node("t", 0, 0, 2)).unwrap();
    failed(&mut st, 1, -9);
    assert!(matches!(st.decide(), Some(Decision::Restart { generation: 1, restart: 1, .. })));
    assert_eq!((st.generation, st.phase, st.failures.len()), (1, JobPhase::Assembling, 0));
    assert!(st.nodes.is_empty(), "every node rejoins the new generation");
    st.join_node(&node("t", 1, 0, 2)).unwrap();
    failed(&mut st, 0, 1);
    assert!(matches!(st.decide(), Some(Decision::Restart { generation: 2, restart: 2, .. })));
    st.join_node(&node("t", 2, 0, 2)).unwrap();
    failed(&mut st, 0, 1);
    match st.decide() {
        Some(Decision::Abort { why, .. }) => assert!(why.contains("no restart left (2 of --max-restarts 2 used)"), "{why}"),
        d => panic!("{d:?}"),
    }
    let mut st = State::new("t".into(), 1);
    st.max_restarts = 5;
    st.join_node(&node("t", 0, 0, 2)).unwrap();
    failed(&mut st, 1, EXIT_BAD_INPUT);
    assert!(matches!(st.decide(), Some(Decision::Abort { .. })), "exit code 2 is fatal");
    let mut st = State::new("t".into(), 1);
    st.max_restarts = 5;
    st.join_node(&node("t", 0, 0, 1)).unwrap();
    failed(&mut st, -1, -15);
    assert!(matches!(st.decide(), Some(Decision::Abort { .. })), "a lost launcher is not restarted");
}

#[test]
fn a_silent_rank_is_unresponsive_after_the_timeout_and_a_finished_one_is_not() {
    let mut st = State::new("t".into(), 1);
    st.heartbeat_timeout = Some(Duration::from_secs(5));
    st.join_node(&node("t", 0, 0, 2)).unwrap();
    st.join(&rank("t", 0, 0, "x")).unwrap();
    st.join(&rank("t", 0, 1, "x")).unwrap();
    let later = Instant::now() + Duration::from_secs(6);
    let beat = HeartbeatRequest { auth: auth("t", 0), rank: 0, step: 7, collective_seq: 9, phase: Phase::Collective as i32 };
    st.heartbeat(&beat).unwrap();
    st.ranks.get_mut(&0).unwrap().last_seen = later;
    let late = st.unresponsive(later);
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].rank, Some(1));
    assert!(late[0].to_string().starts_with("rank 1 on h (node 0) stopped responding: no heartbeat for 6."), "{}", late[0]);
    let done = ReportRequest { auth: auth("t", 0), rank: 1, node_rank: 0, success: true, exit_code: 0, host: "h".into(), message: String::new(), timestamp: 0.0 };
    st.report(&done).unwrap();
    assert!(st.unresponsive(later).is_empty());
}

#[test]
fn a_stalled_collective_names_the_rank_that_is_behind() {
    let mut st = State::new("t".into(), 1);
    st.stall_timeout = Some(Duration::from_secs(60));
    st.join_node(&node("t", 0, 0, 3)).unwrap();
    for r in 0..3 {
        st.join(&rank("t", 0, r, "x")).unwrap();
    }
    let beat = |st: &mut State, r: u32, seq: u64, phase: Phase| {
        let hb = HeartbeatRequest { auth: auth("t", 0), rank: r, step: seq, collective_seq: seq, phase: phase as i32 };
        st.heartbeat(&hb).unwrap();
    };
    // Ranks 0 and 2 wait inside collective 13; rank 1 is still computing after 12.
    beat(&mut st, 0, 13, Phase::Collective);
    beat(&mut st, 1, 12, Phase::Compute);
    beat(&mut st, 2, 13, Phase::Collective);
    let now = Instant::now();
    assert!(st.stalled(now).is_none(), "not before the timeout");
    let later = now + Duration::from_secs(61);
    let f = st.stalled(later).unwrap();
    assert_eq!(f.rank, Some(1));
    assert!(f.unresponsive && !f.silent, "a stalled rank still beats: it gets SIGTERM and the grace period");
    assert!(f.message.contains("this rank is behind: compute at step 12 after 12 collectives"), "{}", f.message);
    // Rank 0 writing a checkpoint keeps the others waiting legitimately.
    beat(&mut st, 0, 13, Phase::Checkpoint);
    assert!(st.stalled(later).is_none());
}

fn elastic(min: u32, max: u32) -> State {
    let mut st = State::new("t".into(), max);
    st.min_nodes = min;
    st.last_call = Duration::from_secs(30);
    st
}

#[test]
fn an_elastic_round_closes_at_max_or_at_last_call_after_min() {
    let mut st = elastic(1, 3);
    assert!(st.join_node(&node("t", 0, 0, 1)).unwrap().is_none(), "MIN reached: last call starts");
    assert!(st.join_node(&node("t", 0, 2, 2)).unwrap().is_none());
    // Last call passes: the round closes with the two nodes in, numbered by node rank.
    st.round_min_since = Some(Instant::now() - Duration::from_secs(31));
    let r = st.join_node(&node("t", 0, 2, 2)).unwrap().unwrap();
    assert_eq!((r.world_size, r.rank_offset, r.nnodes, r.group_rank), (3, 1, 2, 1));
    // A third node arriving now waits for the next restart boundary.
    assert!(st.join_node(&node("t", 0, 1, 1)).unwrap().is_none());
    assert!(st.waiting.contains_key(&1));
    let mut st = elastic(1, 2);
    st.join_node(&node("t", 0, 0, 1)).unwrap();
    let r = st.join_node(&node("t", 0, 1, 1)).unwrap().unwrap();
    assert_eq!((r.world_size, r.nnodes), (2, 2), "MAX closes the round at once");
}

#[test]
fn a_lost_node_shrinks_an_elastic_job_without_using_a_restart_and_aborts_a_static_one() {
    let mut st = elastic(1, 2);
    st.join_node(&node("t", 0, 0, 1)).unwrap();
    st.join_node(&node("t", 0, 1, 1)).unwrap();
    assert!(st.node_disconnected(1, "h1"));
    assert!(!st.node_disconnected(1, "h1"), "reported once");
    failed(&mut st, 0, 1); // rank 0 then fails on the broken ring
    match st.decide() {
        Some(Decision::Rescale { generation: 1, lost, nodes: 1, root }) => {
            assert_eq!(lost.into_iter().collect::<Vec<_>>(), vec![1]);
            assert_eq!(root.rank, None, "the lost node is the root cause");
        }
        d => panic!("{d:?}"),
    }
    assert_eq!(st.restarts, 0, "a membership change uses no restart");
    // The new round closes as soon as the survivor is back: no last-call wait.
    let r = st.join_node(&node("t", 1, 0, 1)).unwrap().unwrap();
    assert_eq!((r.generation, r.world_size, r.nnodes), (1, 1, 1));
    // Below MIN: the job ends.
    let mut st = elastic(2, 3);
    for n in 0..3 {
        st.join_node(&node("t", 0, n, 1)).unwrap();
    }
    st.node_disconnected(1, "h1");
    st.node_disconnected(2, "h2");
    match st.decide() {
        Some(Decision::Abort { why, .. }) => assert!(why.contains("1 node(s) left, fewer than the minimum of 2"), "{why}"),
        d => panic!("{d:?}"),
    }
    let mut st = State::new("t".into(), 2);
    st.max_restarts = 3;
    st.join_node(&node("t", 0, 0, 1)).unwrap();
    st.join_node(&node("t", 0, 1, 1)).unwrap();
    st.node_disconnected(1, "h1");
    assert!(matches!(st.decide(), Some(Decision::Abort { .. })), "a static job cannot lose a node");
}

#[test]
fn a_late_node_joins_at_the_next_restart_and_a_finished_node_is_not_lost() {
    let mut st = elastic(1, 2);
    st.max_restarts = 1;
    st.round_min_since = None;
    st.join_node(&node("t", 0, 0, 1)).unwrap();
    st.round_min_since = Some(Instant::now() - Duration::from_secs(31));
    assert_eq!(st.join_node(&node("t", 0, 0, 1)).unwrap().unwrap().world_size, 1);
    assert!(st.join_node(&node("t", 0, 1, 2)).unwrap().is_none(), "waits while generation 0 runs");
    failed(&mut st, 0, -9);
    assert!(matches!(st.decide(), Some(Decision::Restart { generation: 1, .. })));
    // Generation 1 waits for node 0 and the newcomer (which still says generation 0).
    assert!(st.join_node(&node("t", 1, 0, 1)).unwrap().is_none());
    let r = st.join_node(&node("t", 0, 1, 2)).unwrap().unwrap();
    assert_eq!((r.generation, r.world_size, r.rank_offset, r.group_rank, r.restart_count), (1, 3, 1, 1, 1));
    let done = ReportRequest { auth: auth("t", 1), rank: -1, node_rank: 1, success: true, exit_code: 0, host: "h1".into(), message: String::new(), timestamp: 0.0 };
    st.report(&done).unwrap();
    assert!(!st.node_disconnected(1, "h1"), "a node that finished may disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_calls_sleep_instead_of_waking_each_other() {
    // Two calls wait for a round that never closes (node 0 and 1 of three, say).
    let shared = Shared::new(State::new("t".into(), 3));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let waiter = || {
        let (shared, attempts) = (shared.clone(), attempts.clone());
        tokio::spawn(async move {
            shared
                .wait_for(|_| {
                    attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<Option<()>, Status>(None)
                })
                .await
        })
    };
    let (a, b) = (waiter(), waiter());
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.abort();
    b.abort();
    let n = attempts.load(std::sync::atomic::Ordering::SeqCst);
    // Each registers once and looks again once after the other's registration.
    assert!(n <= 6, "{n} attempts in 0.5 s: the waiters spin");
}

#[test]
fn ranks_silent_past_the_heartbeat_timeout_are_dead_and_failed_ones_are_not() {
    let mut st = State::new("t".into(), 1);
    st.heartbeat_timeout = Some(Duration::from_secs(5));
    st.join_node(&node("t", 0, 0, 3)).unwrap();
    for r in 0..3 {
        st.join(&rank("t", 0, r, "x")).unwrap();
    }
    let later = Instant::now() + Duration::from_secs(6);
    for r in [0, 2] {
        st.ranks.get_mut(&r).unwrap().last_seen = later;
    }
    let silent = st.unresponsive(later);
    st.failures.extend(silent);
    failed(&mut st, 2, 1);
    assert_eq!(st.dead_ranks(), vec![1], "only the silent rank is killed at once");
    st.next_generation();
    assert!(st.dead_ranks().is_empty(), "a new generation starts with none");
}

#[test]
fn a_failed_hub_upload_is_not_retried() {
    let mut st = State::new("t".into(), 1);
    st.max_restarts = 5;
    st.join_node(&node("t", 0, 0, 1)).unwrap();
    failed(&mut st, 0, EXIT_HUB_UNAVAILABLE);
    match st.decide() {
        Some(Decision::Abort { why, .. }) => {
            assert!(why.contains("exit code 69 is not retried: the Hugging Face Hub upload failed"), "{why}")
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn a_full_disk_is_not_retried() {
    let mut st = State::new("t".into(), 1);
    st.max_restarts = 5;
    st.join_node(&node("t", 0, 0, 1)).unwrap();
    failed(&mut st, 0, EXIT_NO_SPACE);
    match st.decide() {
        Some(Decision::Abort { why, .. }) => assert!(why.contains("exit code 74 is not retried: the disk is full"), "{why}"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn a_round_waits_for_node_0_and_hands_every_node_its_master_port_new_each_generation() {
    let mut st = elastic(1, 2);
    st.last_call = Duration::ZERO;
    let with_master = |gen: u64, port: u32| JoinNodeRequest { master_addr: "10.0.0.1".into(), master_port: port, ..node("t", gen, 0, 1) };
    // Node 1 alone has MIN nodes, but no round closes without node 0.
    assert!(st.join_node(&node("t", 0, 1, 1)).unwrap().is_none());
    let r0 = st.join_node(&with_master(0, 4242)).unwrap().unwrap();
    let r1 = st.join_node(&node("t", 0, 1, 1)).unwrap().unwrap();
    for r in [&r0, &r1] {
        assert_eq!((r.master_addr.as_str(), r.master_port, r.nnodes), ("10.0.0.1", 4242, 2));
    }
    assert_eq!((r0.rank_offset, r1.rank_offset), (0, 1));
    // The next generation forgets the old port: every node gets the one node 0 picked anew.
    st.next_generation();
    assert!(st.join_node(&node("t", 1, 1, 1)).unwrap().is_none());
    st.join_node(&with_master(1, 4343)).unwrap().unwrap();
    assert_eq!(st.join_node(&node("t", 1, 1, 1)).unwrap().unwrap().master_port, 4343);
}

#[test]
fn a_failure_while_the_job_stops_is_not_restarted() {
    let mut st = State::new("t".into(), 1);
    st.max_restarts = 3;
    st.join_node(&node("t", 0, 0, 2)).unwrap().unwrap();
    st.stop_requested = Some("SIGTERM to the launcher on h".into());
    failed(&mut st, 1, -libc::SIGTERM); // a program that died of the forwarded signal
    match st.decide() {
        Some(Decision::Abort { why, .. }) => assert_eq!(why, "the job is stopping (SIGTERM to the launcher on h): not restarted"),
        d => panic!("{d:?}"),
    }
    assert_eq!(st.restarts, 0);
}
