//! The launcher and coordinator without libtorch: the rank environment, console and log
//! routing, token and generation checks over real gRPC, and the bind address.

use std::process::Command;
use std::time::Duration;

use rankforge_launcher::coordinator::{Service, Shared, State};
use rankforge_proto::coordinator_client::CoordinatorClient;
use rankforge_proto::{auth, HeartbeatRequest, JoinNodeRequest};

fn launcher() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rankforge-launch"))
}

fn env_of(log: &str) -> std::collections::HashMap<String, String> {
    log.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn ranks_get_the_torchrun_environment_and_their_own_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    // A rank binary named rankforge* is a rankforge rank (cores shared out); /bin/sh under
    // another name is a program (torchrun's OMP_NUM_THREADS=1).
    let rankforge = tmp.path().join("rankforge");
    std::os::unix::fs::symlink("/bin/sh", &rankforge).unwrap();
    let out = launcher()
        .args(["--nproc-per-node", "3", "--log-dir", logs.to_str().unwrap(), "--rank-binary", rankforge.to_str().unwrap(), "--", "-c", "env | sort"])
        .env_remove("OMP_NUM_THREADS")
        .env_remove("RANKFORGE_JOB_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let console = String::from_utf8_lossy(&out.stdout);
    // Rank 0 only on the console, each line prefixed; every rank in its own log.
    assert!(console.lines().all(|l| l.starts_with("[rank 0] ")), "{console}");
    assert!(console.contains("[rank 0] RANK=0"));
    let mut tokens = Vec::new();
    let mut master_ports = Vec::new();
    for r in 0..3 {
        let env = env_of(&std::fs::read_to_string(logs.join(format!("rank{r}.log"))).unwrap());
        let want = [
            ("RANK", r.to_string()),
            ("LOCAL_RANK", r.to_string()),
            ("WORLD_SIZE", "3".into()),
            ("LOCAL_WORLD_SIZE", "3".into()),
            ("GROUP_RANK", "0".into()),
            ("GROUP_WORLD_SIZE", "1".into()),
            ("ROLE_RANK", r.to_string()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            ("TORCHELASTIC_RESTART_COUNT", "0".into()),
            ("TORCHELASTIC_USE_AGENT_STORE", "False".into()),
            ("RANKFORGE_GENERATION", "0".into()),
        ];
        for (k, v) in want {
            assert_eq!(env.get(k), Some(&v), "rank {r}: {k}");
        }
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(env["OMP_NUM_THREADS"], (cores / 3).max(1).to_string());
        // MASTER_PORT is a port of its own, not the coordinator's (where rank 0's store could
        // not bind).
        let coordinator = env["RANKFORGE_COORDINATOR"].strip_prefix("127.0.0.1:").unwrap().to_string();
        assert_ne!(env["MASTER_PORT"], coordinator);
        assert!(env["MASTER_PORT"].parse::<u16>().unwrap() > 0);
        master_ports.push(env["MASTER_PORT"].clone());
        tokens.push(env["RANKFORGE_JOB_TOKEN"].clone());
    }
    assert!(master_ports.iter().all(|p| *p == master_ports[0]), "one MASTER_PORT for the job: {master_ports:?}");
    assert!(tokens[0].len() == 32 && tokens.iter().all(|t| *t == tokens[0]), "one random token per job: {tokens:?}");
    // --all-ranks shows everyone; PET_NPROC_PER_NODE stands in for the flag; a new job gets a
    // new token.
    let logs2 = tmp.path().join("logs2");
    let out = launcher()
        .args(["--all-ranks", "--log-dir", logs2.to_str().unwrap(), "--rank-binary", "/bin/sh", "--", "-c"])
        .arg("echo hello $RANK; echo RANKFORGE_JOB_TOKEN=$RANKFORGE_JOB_TOKEN")
        .env("PET_NPROC_PER_NODE", "2")
        .env_remove("RANKFORGE_JOB_TOKEN")
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(console.contains("[rank 0] hello 0") && console.contains("[rank 1] hello 1"), "{console}");
    let again = env_of(&std::fs::read_to_string(logs2.join("rank1.log")).unwrap());
    assert_eq!(again["RANKFORGE_JOB_TOKEN"].len(), 32);
    assert_ne!(again["RANKFORGE_JOB_TOKEN"], tokens[0]);
}

#[test]
fn a_failing_rank_stops_the_others_and_is_named_with_its_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = launcher()
        .args(["--nproc-per-node", "3", "--grace-period", "5", "--log-dir", tmp.path().to_str().unwrap(), "--rank-binary", "/bin/sh", "--"])
        .args(["-c", r#"if [ "$RANK" = 1 ]; then echo "rank one gives up" >&2; sleep 0.5; exit 7; fi; echo $$ > "$PIDS/pid.$RANK"; exec sleep 60"#])
        .env("PIDS", tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("root cause: rank 1 on") && err.contains("exited with code 7"), "{err}");
    assert!(err.contains("| rank one gives up"), "the failed rank's last log lines are shown: {err}");
    assert!(err.contains("exited with code 7 without an error file"), "{err}");
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("rank1.error.json")).unwrap()).unwrap();
    assert_eq!(e["message"]["extraInfo"]["py_callstack"].as_str().unwrap().lines().last(), Some("rank one gives up"));
    assert!(started.elapsed() < Duration::from_secs(30), "the sleeping ranks were stopped");
    for r in [0, 2] {
        let pid = std::fs::read_to_string(tmp.path().join(format!("pid.{r}"))).unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(), "rank {r} (pid {pid}) outlived the launcher");
    }
}

#[test]
fn bad_launch_arguments_get_one_clear_line() {
    let cases: &[(&[&str], &[(&str, &str)], &str)] = &[
        (&["--nproc-per-node", "2", "--rank-binary", "/bin/true", "--", "x"], &[("CUDA_VISIBLE_DEVICES", "")], ""),
        (&["--nproc-per-node", "gpu", "--rank-binary", "/bin/true", "--", "x"], &[("CUDA_VISIBLE_DEVICES", "")], "no visible GPU"),
        (&["--nnodes", "2", "--rank-binary", "/bin/true", "--", "x"], &[], "needs --coordinator HOST:PORT"),
        (&["--nnodes", "2", "--coordinator", "127.0.0.1:0", "--rank-binary", "/bin/true", "--", "x"], &[], "give a fixed port"),
        (&["--nnodes", "4:2", "--rank-binary", "/bin/true", "--", "x"], &[], "MIN (4) is larger than MAX (2)"),
        (&["--nnodes", "1:4", "--rank-binary", "/bin/true", "--", "x"], &[], "needs --coordinator HOST:PORT"),
        (&["--nnodes", "2", "--coordinator", "127.0.0.1:29999", "--rank-binary", "/bin/true", "--", "x"], &[], "export RANKFORGE_JOB_TOKEN"),
        (&["--rank-binary", "/nonexistent/rankforge", "--", "x"], &[], "/nonexistent/rankforge does not exist"),
        (&["--rank-binary", "/bin/true"], &[], "nothing to run"),
    ];
    for (args, env, want) in cases {
        let out = launcher().args(*args).envs(env.iter().copied()).env_remove("MASTER_ADDR").env_remove("RANKFORGE_JOB_TOKEN").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if want.is_empty() {
            assert!(out.status.success(), "{args:?}: {err}");
            continue;
        }
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    }
}

#[test]
fn more_ranks_than_gpus_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("r.toml");
    std::fs::write(&recipe, "[run]\ndir = \"x\"\n[train]\ndevice = \"cuda\"\n").unwrap();
    let out = launcher()
        .args(["--nproc-per-node", "2", "--rank-binary", "/bin/true", "--config", recipe.to_str().unwrap()])
        .env("CUDA_VISIBLE_DEVICES", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("2 ranks requested on this node but only 1 GPU(s) are visible (CUDA_VISIBLE_DEVICES=0)"), "{err}");
}

async fn serve(host: &str, token: &str) -> (std::net::SocketAddr, std::sync::Arc<Shared>) {
    let shared = Shared::new(State::new(token.into(), 1));
    let addr = rankforge_launcher::serve(host, 0, shared.clone()).await.unwrap();
    let _ = Service(shared.clone());
    (addr, shared)
}

#[tokio::test]
async fn wrong_token_is_unauthenticated_and_stale_generation_is_refused() {
    let (addr, shared) = serve("127.0.0.1", "right-token").await;
    let mut c = CoordinatorClient::connect(format!("http://{addr}")).await.unwrap();
    let join = |token: &str, generation: u64| JoinNodeRequest { auth: auth(token, generation), node_rank: 0, nproc: 1, host: "h".into(), ..Default::default() };
    let e = c.join_node(join("wrong-token", 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = c.join_node(JoinNodeRequest { auth: None, ..join("", 0) }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let hb = |generation: u64| HeartbeatRequest { auth: auth("right-token", generation), rank: 0, step: 1, collective_seq: 1, phase: 2 };
    assert_eq!(c.heartbeat(hb(0)).await.unwrap_err().code(), tonic::Code::FailedPrecondition, "not joined yet");
    c.join_node(join("right-token", 0)).await.unwrap();
    // The job restarts: the previous generation's callers are refused.
    shared.state.lock().unwrap().next_generation();
    let e = c.join_node(join("right-token", 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("stale generation 0"), "{}", e.message());
    let e = c.heartbeat(hb(0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(c.join_node(join("right-token", 1)).await.is_ok());
}

#[tokio::test]
async fn the_coordinator_listens_only_on_the_address_it_was_given() {
    // 127.0.0.2 is loopback too, but a different address: nothing may answer on 127.0.0.1.
    let (addr, _) = serve("127.0.0.2", "t").await;
    assert_eq!(addr.ip().to_string(), "127.0.0.2");
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    let other = format!("127.0.0.1:{}", addr.port());
    assert!(tokio::net::TcpStream::connect(&other).await.is_err(), "{other} must be closed");
}

#[test]
fn a_busy_coordinator_port_is_bad_input_in_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = launcher().args(["--coordinator", &addr, "--rank-binary", "/bin/true", "--", "x"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "bad input, like the launcher's other bad input: {err}");
    assert_eq!(
        err.trim(),
        format!("rankforge-launch: error: cannot start the coordinator: {addr} is already in use (another job?); pick another port, or --coordinator 127.0.0.1:0 for a free one")
    );
}

#[tokio::test]
async fn port_in_use_suggests_a_free_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let shared = Shared::new(State::new("t".into(), 1));
    let e = rankforge_launcher::serve("127.0.0.1", port, shared).await.unwrap_err().to_string();
    assert!(e.contains(&format!("127.0.0.1:{port} is already in use")) && e.contains("--coordinator 127.0.0.1:0"), "{e}");
}

/// Two launchers configured only by the environment: each node's ranks get the right global
/// ranks, and both meet at the coordinator the environment names.
fn two_nodes_from_env(node_env: impl Fn(u32) -> Vec<(String, String)>) -> Vec<Vec<std::collections::HashMap<String, String>>> {
    let tmp = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..2u32)
        .map(|node| {
            let logs = tmp.path().join(format!("node{node}"));
            launcher()
                .args(["--nproc-per-node", "2", "--log-dir", logs.to_str().unwrap(), "--join-timeout", "20", "--rank-binary", "/bin/sh", "--", "-c", "env | sort"])
                .env_remove("RANKFORGE_JOB_TOKEN")
                .env_remove("MASTER_ADDR")
                .envs(node_env(node))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    (0..2)
        .map(|node| {
            (0..2)
                .map(|local| {
                    let log = tmp.path().join(format!("node{node}/rank{}.log", node * 2 + local));
                    env_of(&std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display())))
                })
                .collect()
        })
        .collect()
}

#[test]
fn slurm_variables_place_nodes_ranks_and_the_coordinator() {
    let job = 40000 + std::process::id() % 9000;
    let envs = two_nodes_from_env(|node| {
        [
            ("SLURM_JOB_ID", job.to_string()),
            ("SLURM_PROCID", node.to_string()),
            ("SLURM_LOCALID", "0".into()),
            ("SLURM_NODEID", node.to_string()),
            ("SLURM_NTASKS", "2".into()),
            ("SLURM_NNODES", "2".into()),
            ("SLURM_JOB_NODELIST", "127.0.0.[1-2]".into()),
            ("SLURM_TASKS_PER_NODE", "1(x2)".into()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    });
    for (node, ranks) in envs.iter().enumerate() {
        for (local, env) in ranks.iter().enumerate() {
            assert_eq!(env["RANK"], (node * 2 + local).to_string());
            assert_eq!(env["LOCAL_RANK"], local.to_string());
            assert_eq!(env["WORLD_SIZE"], "4");
            assert_eq!(env["GROUP_RANK"], node.to_string());
            assert_eq!(env["GROUP_WORLD_SIZE"], "2");
            // The coordinator on the first host of the allocation, on the job's own port;
            // MASTER_ADDR/MASTER_PORT: that host and a free port node 0 chose, the same for all.
            assert_eq!(env["RANKFORGE_COORDINATOR"], format!("127.0.0.1:{}", 20000 + job % 20000));
            assert_eq!(env["MASTER_ADDR"], "127.0.0.1");
            assert_ne!(env["MASTER_PORT"], (20000 + job % 20000).to_string());
            assert_eq!(env["MASTER_PORT"], envs[0][0]["MASTER_PORT"]);
            assert_eq!(env["TORCHELASTIC_RUN_ID"], job.to_string());
        }
    }
    assert_eq!(envs[0][0]["RANKFORGE_JOB_TOKEN"], envs[1][0]["RANKFORGE_JOB_TOKEN"]);
}

#[test]
fn kubeflow_pet_variables_configure_a_two_node_job() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let envs = two_nodes_from_env(|node| {
        [
            ("PET_NNODES", "2".to_string()),
            ("PET_NODE_RANK", node.to_string()),
            ("PET_MASTER_ADDR", "127.0.0.1".into()),
            ("PET_MASTER_PORT", port.to_string()),
            ("RANKFORGE_JOB_TOKEN", "from-a-kubernetes-secret".into()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    });
    assert_eq!(envs[1][1]["RANK"], "3");
    assert_eq!(envs[1][1]["RANKFORGE_COORDINATOR"], format!("127.0.0.1:{port}"));
    assert_ne!(envs[1][1]["MASTER_PORT"], port.to_string(), "the program's store gets a port of its own");
    assert_eq!(envs[1][1]["MASTER_PORT"], envs[0][0]["MASTER_PORT"], "handed to every node");
}

#[test]
fn a_stopped_slurm_job_is_requeued_until_the_restart_count_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = tmp.path().join("scontrol-calls");
    std::fs::write(bin.join("scontrol"), format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display())).unwrap();
    std::fs::set_permissions(bin.join("scontrol"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = |restart_count: &str| {
        launcher()
            .args(["--requeue", "3", "--log-dir", tmp.path().join("logs").to_str().unwrap(), "--rank-binary", "/bin/sh", "--", "-c", "exit 75"])
            .envs([
                ("SLURM_JOB_ID", "777"),
                ("SLURM_PROCID", "0"),
                ("SLURM_LOCALID", "0"),
                ("SLURM_NODEID", "0"),
                ("SLURM_NTASKS", "1"),
                ("SLURM_NNODES", "1"),
                ("SLURM_JOB_NODELIST", "localhost"),
                ("SLURM_TASKS_PER_NODE", "1"),
                ("SLURM_RESTART_COUNT", restart_count),
                ("PATH", &path),
            ])
            .output()
            .unwrap()
    };
    // Every rank exited with 75 (stopped after a checkpoint): the launcher exits 75 and requeues.
    let out = run("1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(rankforge_proto::EXIT_STOPPED), "{err}");
    assert!(err.contains("requeued Slurm job 777 (restart 2 of 3)"), "{err}");
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "requeue 777\n");
    let out = run("3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not requeued: SLURM_RESTART_COUNT = 3 reached --requeue 3"), "{err}");
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "requeue 777\n", "no second call");
}

#[test]
fn sigterm_is_forwarded_to_a_program_which_checkpoints_itself_and_the_launcher_exits_75() {
    let tmp = tempfile::tempdir().unwrap();
    // A program (not rankforge): it saves on SIGTERM, then exits 0; one that does not handle it
    // dies of it, and the launcher says so with 128 + 15.
    let run = |script: &str| {
        let mut child = launcher()
            .args(["--nproc-per-node", "2", "--log-dir", tmp.path().join("logs").to_str().unwrap(), "--no-python", "--", "sh", "-c", script])
            .env("OUT", tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !(0..2).all(|r| tmp.path().join(format!("ready.{r}")).exists()) {
            assert!(std::time::Instant::now() < deadline, "the ranks did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        for r in 0..2 {
            std::fs::remove_file(tmp.path().join(format!("ready.{r}"))).unwrap();
        }
        (status.code(), err)
    };
    let (code, err) = run(r#"trap 'echo saved > "$OUT/saved.$RANK"; exit 0' TERM; touch "$OUT/ready.$RANK"; while true; do sleep 0.1; done"#);
    assert_eq!(code, Some(rankforge_proto::EXIT_STOPPED), "{err}");
    assert!(err.contains("SIGTERM: forwarded to every rank"), "{err}");
    for r in 0..2 {
        assert_eq!(std::fs::read_to_string(tmp.path().join(format!("saved.{r}"))).unwrap(), "saved\n", "rank {r} got the signal");
    }
    let (code, err) = run(r#"touch "$OUT/ready.$RANK"; exec sleep 60"#);
    assert_eq!(code, Some(128 + libc::SIGTERM), "{err}");
    assert!(!err.contains("restart"), "a stop is not a failure to restart from: {err}");
}

#[test]
fn a_hostfile_job_runs_the_same_program_on_every_node_with_one_master_port() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 slots=1\nlocalhost slots=1\n").unwrap();
    // An "ssh" that runs the remote command here, as ssh would on the host.
    let ssh = tmp.path().join("fake-ssh");
    std::fs::write(&ssh, "#!/bin/sh\nshift\nexec sh -c \"$*\"\n").unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = launcher()
        .args(["--hostfile", hosts.to_str().unwrap(), "--log-dir", tmp.path().join("logs").to_str().unwrap(), "--no-python", "--"])
        .args(["sh", "-c", r#"echo "$GROUP_RANK $MASTER_ADDR $MASTER_PORT" > "$OUT/rank.$RANK""#])
        .env("RANKFORGE_SSH", &ssh)
        .env("OUT", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = |r: u32| std::fs::read_to_string(tmp.path().join(format!("rank.{r}"))).unwrap();
    let (l0, l1) = (line(0), line(1));
    let port0 = l0.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(l0, format!("0 127.0.0.1 {port0}\n"));
    assert_eq!(l1, format!("1 127.0.0.1 {port0}\n"), "node 1 runs the program with node 0's MASTER_ADDR/MASTER_PORT");
}
