//! From flags, `PET_*` variables (Kubeflow), Slurm variables and a hostfile to one [`Plan`]:
//! which node this is, how many ranks it starts, where the coordinator is. Precedence: command
//! line, then `PET_*` (clap's `env`), then Slurm, then single-node defaults.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;

use crate::slurm;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rankforge-launch",
    version,
    about = "Start one rankforge rank (or any program: SCRIPT.py, --no-python PROG) per GPU or CPU slot on each host, and the job's coordinator on node 0.",
    after_help = "Examples:\n  rankforge-launch --nproc-per-node 2 --config configs/gpt_tiny_pretrain_cpu.toml\n  \
                  rankforge-launch --nnodes 2 --node-rank 0 --coordinator 10.0.0.1:29400 --config recipe.toml   (on each node)\n  \
                  rankforge-launch --hostfile hosts.txt --config recipe.toml\n  \
                  rankforge-launch --nproc-per-node 2 -- bench collective --bytes 16M\n  \
                  rankforge-launch --nproc-per-node 2 train.py --epochs 3          (python3 -u train.py, as torchrun)\n  \
                  rankforge-launch --nproc-per-node 2 --no-python -- ./my_program --flag"
)]
pub struct Args {
    /// Ranks on this node: a number, `auto` (the visible GPUs, else one CPU rank), `gpu` or
    /// `cpu` (one rank per core).
    #[arg(long, env = "PET_NPROC_PER_NODE")]
    pub nproc_per_node: Option<String>,
    /// Number of nodes: `N`, or `MIN:MAX` for an elastic job that continues with fewer nodes
    /// (down to MIN) when some are lost, and admits late nodes (up to MAX) at its next restart.
    #[arg(long, env = "PET_NNODES")]
    pub nnodes: Option<String>,
    /// This node's index, 0 hosts the coordinator.
    #[arg(long, env = "PET_NODE_RANK")]
    pub node_rank: Option<u32>,
    /// The coordinator's HOST:PORT. Node 0 listens there (port 0: a free port, printed); the
    /// other nodes connect to it. Default on one node: 127.0.0.1:0.
    #[arg(long, visible_alias = "rdzv-endpoint", env = "PET_RDZV_ENDPOINT")]
    pub coordinator: Option<String>,
    /// Elastic jobs: seconds a rendezvous round that has MIN nodes but not MAX waits for more
    /// (torchrun's last_call_timeout). Rounds after a restart close as soon as every surviving
    /// node is back.
    #[arg(long, env = "RANKFORGE_LAST_CALL", default_value_t = 30.0)]
    pub last_call: f64,
    /// One node on loopback with a free port (the default when --nnodes is 1).
    #[arg(long)]
    pub standalone: bool,
    /// torchrun's `--master-addr`: where node 0 hosts the coordinator when --coordinator is not
    /// given (with --master-port; default port 29500). The program's own MASTER_ADDR/MASTER_PORT
    /// are always a fresh free port on node 0, not this one.
    #[arg(long, env = "PET_MASTER_ADDR")]
    pub master_addr: Option<String>,
    /// torchrun's `--master-port`: the coordinator's port when --coordinator is not given (with
    /// --master-addr, default 127.0.0.1).
    #[arg(long, env = "PET_MASTER_PORT")]
    pub master_port: Option<u16>,
    /// The address this node advertises to its peers (CPU ring). Default: the address that
    /// routes to the coordinator.
    #[arg(long, env = "PET_LOCAL_ADDR")]
    pub local_addr: Option<String>,
    /// Where every rank's output goes (`rank<N>.log`). Default: `<run.dir>/logs`.
    #[arg(long, env = "PET_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Print every rank's output on the console (default: rank 0's only).
    #[arg(long)]
    pub all_ranks: bool,
    /// `host slots=N` lines: this launcher is node 0 (the first host) and starts the others
    /// over ssh (`$RANKFORGE_SSH`, default `ssh`).
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
    /// Seconds to keep trying an unreachable coordinator, and to wait for all nodes to join.
    #[arg(long, env = "RANKFORGE_JOIN_TIMEOUT", default_value_t = 300.0)]
    pub join_timeout: f64,
    /// Restarts of the whole job (all nodes together) after a failure; each resumes from the
    /// newest complete checkpoint. Exit code 2 (bad input) is never retried.
    #[arg(long, env = "PET_MAX_RESTARTS", default_value_t = 0)]
    pub max_restarts: u32,
    /// Seconds without a heartbeat after which a rank counts as failed (0: never). Ranks beat
    /// every timeout/3 seconds (at most 2 s).
    #[arg(long, env = "RANKFORGE_HEARTBEAT_TIMEOUT", default_value_t = 30.0)]
    pub heartbeat_timeout: f64,
    /// Under Slurm: after the job stopped on SIGTERM/SIGUSR1 with its checkpoint written,
    /// requeue it (`scontrol requeue $SLURM_JOB_ID`) while `SLURM_RESTART_COUNT` is below N.
    #[arg(long, value_name = "N")]
    pub requeue: Option<u32>,
    /// Seconds without any rank completing a collective (while none checkpoints, evaluates or
    /// sets up) after which the rank that is behind counts as failed (0: never).
    #[arg(long, env = "RANKFORGE_STALL_TIMEOUT", default_value_t = 600.0)]
    pub stall_timeout: f64,
    /// Seconds between SIGTERM and SIGKILL when ranks are stopped.
    #[arg(long, default_value_t = 30.0)]
    pub grace_period: f64,
    /// An id for the job (default: Slurm's job id, else random).
    #[arg(long, visible_alias = "rdzv-id", env = "PET_RDZV_ID")]
    pub run_id: Option<String>,
    /// The recipe, passed to every rank (`rankforge train --config FILE`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Recipe overrides, passed to every rank.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The rank binary (default: `rankforge` beside this executable). One whose file name does
    /// not start with `rankforge` is a program like --no-python's.
    #[arg(long, env = "RANKFORGE_BINARY")]
    pub rank_binary: Option<PathBuf>,
    /// Every rank runs the command (after `--`) as a program and its arguments: any executable,
    /// looked up in PATH, not a rankforge command (torchrun's `--no-python`).
    #[arg(long)]
    pub no_python: bool,
    /// Every rank runs `PYTHON -u -m MODULE ARGS…` for the command `MODULE ARGS…` (torchrun's `-m`).
    #[arg(short = 'm', long)]
    pub module: bool,
    /// The Python that runs a `SCRIPT.py` command and `-m` (default: python3 in PATH).
    #[arg(long, env = "RANKFORGE_PYTHON", default_value = "python3")]
    pub python: String,
    /// What every rank runs instead of `train --config ...`: a rankforge command
    /// (`bench collective`), `SCRIPT.py ARGS…` (run by --python, as torchrun does), or with
    /// --no-python any program. After `--`, or after the flags.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// How ranks use devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMode {
    Cpu,
    /// One GPU per rank; `CUDA_VISIBLE_DEVICES` = the GPU's index.
    Gpu,
}

/// A remote node started over ssh (hostfile mode).
#[derive(Debug, Clone)]
pub struct RemoteNode {
    pub host: String,
    pub node_rank: u32,
    pub slots: u32,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Most nodes (MAX of `--nnodes MIN:MAX`; node ranks are below it).
    pub nnodes: u32,
    /// Fewest nodes the job continues with (equal to `nnodes` unless elastic).
    pub min_nodes: u32,
    pub node_rank: u32,
    pub nproc: u32,
    pub mode: DeviceMode,
    /// Physical GPU index per local rank (GPU mode).
    pub gpus: Vec<String>,
    /// Node 0 binds this; the others connect to it (host, port; port 0 = pick one).
    pub coordinator: (String, u16),
    pub local_addr: Option<String>,
    pub log_dir: PathBuf,
    pub token: String,
    pub run_id: String,
    pub rank_binary: PathBuf,
    /// Arguments of `rank_binary` for every rank.
    pub rank_args: Vec<String>,
    /// The ranks run a program that is not rankforge (SCRIPT.py, --no-python, -m, a
    /// --rank-binary not named rankforge*): no coordinator client inside, so they get SIGTERM
    /// and SIGUSR1 forwarded and torchrun's OMP_NUM_THREADS.
    pub program: bool,
    pub remotes: Vec<RemoteNode>,
    pub threads_per_rank: usize,
    /// Slurm's job id and `SLURM_RESTART_COUNT`, under srun.
    pub slurm_job: Option<(String, u32)>,
}

/// The recipe values the launcher needs (it never loads the recipe as rankforge does).
#[derive(Debug, Default)]
pub struct RecipeView {
    pub run_dir: Option<PathBuf>,
    pub device: Option<String>,
}

/// Reads `run.dir` and `train.device` from a recipe file with `--set` overrides applied.
pub fn recipe_view(file: &Path, overrides: &[String]) -> Result<RecipeView> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read the recipe", file.display()))?;
    // One line, as `rankforge train` words it (`FILE: line N: what`), not toml's multi-line report.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| text[..s.start].lines().count().max(1).to_string()).unwrap_or_else(|| "?".into());
        anyhow!("{}: line {line}: {}", file.display(), one_line(e.message()))
    })?;
    let get = |section: &str, key: &str| -> Option<String> {
        let over = overrides.iter().rev().find_map(|o| {
            let (k, v) = o.split_once('=')?;
            (k.trim() == format!("{section}.{key}")).then(|| v.trim().trim_matches('"').to_string())
        });
        over.or_else(|| table.get(section)?.get(key)?.as_str().map(str::to_string))
    };
    Ok(RecipeView { run_dir: get("run", "dir").map(PathBuf::from), device: get("train", "device") })
}

/// `msg` on one line: its lines joined with "; ".
fn one_line(msg: &str) -> String {
    msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// GPUs this process may use: `CUDA_VISIBLE_DEVICES` when set, else the driver's list.
pub fn visible_gpus() -> Vec<String> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        let v = v.trim();
        if v.is_empty() || v == "-1" || v.eq_ignore_ascii_case("NoDevFiles") {
            return Vec::new();
        }
        return v.split(',').map(|s| s.trim().to_string()).collect();
    }
    let n = std::fs::read_dir("/proc/driver/nvidia/gpus").map(|d| d.count()).unwrap_or(0);
    (0..n).map(|i| i.to_string()).collect()
}

fn parse_hostport(s: &str, what: &str) -> Result<(String, u16)> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| anyhow!("{what} = {s:?}: expected HOST:PORT"))?;
    let port = port.parse().map_err(|_| anyhow!("{what} = {s:?}: {port:?} is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{what} = {s:?}: the host is empty");
    }
    Ok((host.to_string(), port))
}

/// `host slots=N` lines (`#` comments, blank lines ignored); slots default to 1.
pub fn parse_hostfile(path: &Path) -> Result<Vec<(String, u32)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the hostfile", path.display()))?;
    let mut hosts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let host = parts.next().expect("non-empty line").to_string();
        let mut slots = 1;
        for p in parts {
            match p.strip_prefix("slots=").map(str::parse::<u32>) {
                Some(Ok(n)) if n > 0 => slots = n,
                _ => bail!("{}:{}: expected `host slots=N` with N ≥ 1, found {p:?}", path.display(), i + 1),
            }
        }
        if hosts.iter().any(|(h, _)| *h == host) {
            bail!("{}:{}: host {host} is listed twice", path.display(), i + 1);
        }
        hosts.push((host, slots));
    }
    if hosts.is_empty() {
        bail!("{}: the hostfile lists no hosts", path.display());
    }
    Ok(hosts)
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the job token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The local address that routes to `host` (no packet is sent).
pub fn route_addr(host: &str, port: u16) -> Option<String> {
    let target: SocketAddr = (host, port.max(1)).to_socket_addrs().ok()?.next()?;
    if target.ip().is_loopback() {
        return Some(target.ip().to_string());
    }
    let sock = UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).ok()?;
    sock.connect(target).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

impl Plan {
    pub fn resolve(args: &Args) -> Result<Plan> {
        let slurm = slurm::from_env(|k| std::env::var(k).ok()).map_err(|e| anyhow!("Slurm environment: {e}"))?;
        let hostfile = match &args.hostfile {
            Some(p) => Some(parse_hostfile(p)?),
            None => None,
        };
        if args.config.is_none() && args.command.is_empty() {
            bail!(
                "nothing to run: give --config RECIPE (each rank runs `rankforge train`), or after `--` a rankforge command, \
                 a SCRIPT.py, or with --no-python any program"
            );
        }
        if args.config.is_some() && !args.command.is_empty() {
            bail!("give either --config (each rank trains) or a command after `--`, not both");
        }
        let recipe = match &args.config {
            Some(c) => recipe_view(c, &args.set)?,
            None => RecipeView::default(),
        };

        // Nodes: flags/PET, else hostfile, else Slurm, else one.
        let (min_nodes, nnodes) = match &args.nnodes {
            Some(s) => parse_nnodes(s)?,
            None => {
                let n = match (&hostfile, &slurm) {
                    (Some(h), _) => h.len() as u32,
                    (None, Some(s)) => s.nnodes as u32,
                    _ => 1,
                };
                (n, n)
            }
        };
        if let Some(s) = &slurm {
            if args.nnodes.is_none() && s.ntasks != s.nnodes {
                bail!(
                    "under srun, run one launcher per node (srun --ntasks-per-node=1 rankforge-launch ...): \
                     SLURM_NTASKS = {} but SLURM_NNODES = {}",
                    s.ntasks,
                    s.nnodes
                );
            }
        }
        let node_rank = match (args.node_rank, &slurm) {
            (Some(r), _) => r,
            (None, Some(s)) if hostfile.is_none() => s.node_id as u32,
            _ => 0,
        };
        if node_rank >= nnodes {
            bail!("--node-rank {node_rank} is out of range for --nnodes {nnodes}");
        }
        if hostfile.is_some() && node_rank != 0 {
            bail!("--hostfile is for node 0's launcher (it starts the other nodes itself)");
        }
        let shared_run_id = args.run_id.clone().or_else(|| slurm.as_ref().map(|s| s.job_id.clone()));
        let run_id = shared_run_id.clone().unwrap_or_else(|| format!("rankforge-{}", std::process::id()));

        // The coordinator.
        let flags_master = (args.master_addr.is_some() || args.master_port.is_some())
            .then(|| (args.master_addr.clone().unwrap_or_else(|| "127.0.0.1".into()), args.master_port.unwrap_or(29500)));
        let coordinator = match (&args.coordinator, &hostfile, flags_master, &slurm, &env_master()) {
            (Some(c), ..) => parse_hostport(c, "--coordinator")?,
            (None, Some(h), ..) => (h[0].0.clone(), 0),
            (None, None, Some(m), ..) => m,
            (None, None, None, ..) if nnodes == 1 || args.standalone => ("127.0.0.1".to_string(), 0),
            (None, None, None, _, Some(m)) => parse_hostport(m, "MASTER_ADDR:MASTER_PORT")?,
            (None, None, None, Some(s), None) => (s.nodes[0].clone(), slurm::coordinator_port(&s.job_id)),
            (None, None, None, None, None) => bail!("a job of {nnodes} nodes needs --coordinator HOST:PORT (node 0's address, reachable from every node)"),
        };
        if coordinator.1 == 0 && nnodes > 1 && hostfile.is_none() {
            bail!("--coordinator {}:0 picks a free port, which the other {} nodes cannot know: give a fixed port", coordinator.0, nnodes - 1);
        }

        // This node's ranks and devices.
        let gpus = visible_gpus();
        let slots = hostfile.as_ref().map(|h| h[0].1);
        let spec = args.nproc_per_node.clone().or(slots.map(|n| n.to_string())).unwrap_or_else(|| "auto".into());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let wants_gpu = match recipe.device.as_deref() {
            Some("cuda") => Some(true),
            Some("cpu") => Some(false),
            _ => None,
        };
        let (nproc, mode) = match spec.as_str() {
            "auto" => match wants_gpu {
                Some(false) => (1, DeviceMode::Cpu),
                _ if !gpus.is_empty() => (gpus.len() as u32, DeviceMode::Gpu),
                Some(true) => bail!("train.device = \"cuda\" but this host has no visible GPU (CUDA_VISIBLE_DEVICES, /proc/driver/nvidia)"),
                None => (1, DeviceMode::Cpu),
            },
            "gpu" if gpus.is_empty() => bail!("--nproc-per-node gpu: this host has no visible GPU"),
            "gpu" => (gpus.len() as u32, DeviceMode::Gpu),
            "cpu" => (cores as u32, DeviceMode::Cpu),
            n => {
                let n: u32 = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow!("--nproc-per-node {n:?}: expected a positive number, auto, gpu or cpu"))?;
                let gpu = wants_gpu.unwrap_or(!gpus.is_empty() && args.config.is_some());
                if gpu && n as usize > gpus.len() {
                    bail!(
                        "{n} ranks requested on this node but only {} GPU(s) are visible{}; lower --nproc-per-node or run on CPU (--set train.device=\"cpu\")",
                        gpus.len(),
                        std::env::var("CUDA_VISIBLE_DEVICES").map(|v| format!(" (CUDA_VISIBLE_DEVICES={v})")).unwrap_or_default()
                    );
                }
                (n, if gpu { DeviceMode::Gpu } else { DeviceMode::Cpu })
            }
        };
        if mode == DeviceMode::Cpu && nproc as usize > cores {
            eprintln!("rankforge-launch: warning: {nproc} CPU ranks on {cores} cores: ranks share cores");
        }
        let threads_per_rank = (cores / nproc as usize).max(1);

        let log_dir = match (&args.log_dir, &recipe.run_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(run)) => run.join("logs"),
            (None, None) => std::env::temp_dir().join(format!("{run_id}-logs")),
        };
        let token = match std::env::var(rankforge_proto::env::JOB_TOKEN) {
            Ok(t) if !t.is_empty() => t,
            _ if nnodes == 1 || hostfile.is_some() => random_token()?,
            _ if shared_run_id.is_none() => bail!(
                "a job of {nnodes} nodes needs the same secret on every node: export RANKFORGE_JOB_TOKEN (e.g. $(openssl rand -hex 16)) on all of them"
            ),
            _ => {
                eprintln!(
                    "rankforge-launch: warning: {} is not set, so the job token is derived from the run id {run_id:?}, \
                     which is not secret; export the same random {} on every node",
                    rankforge_proto::env::JOB_TOKEN,
                    rankforge_proto::env::JOB_TOKEN
                );
                format!("derived-{}", fnv_hex(&run_id))
            }
        };
        let (rank_binary, rank_args, program) = rank_command(args)?;
        let remotes = hostfile
            .iter()
            .flat_map(|h| h.iter().enumerate().skip(1))
            .map(|(i, (host, slots))| RemoteNode { host: host.clone(), node_rank: i as u32, slots: *slots })
            .collect();
        Ok(Plan {
            nnodes,
            min_nodes,
            node_rank,
            nproc,
            mode,
            gpus: if mode == DeviceMode::Gpu { gpus } else { Vec::new() },
            coordinator,
            local_addr: args.local_addr.clone(),
            log_dir,
            token,
            run_id,
            rank_binary,
            rank_args,
            program,
            remotes,
            threads_per_rank,
            slurm_job: slurm.as_ref().map(|s| (s.job_id.clone(), s.restart_count)),
        })
    }
}

/// `MASTER_ADDR:MASTER_PORT`, as PyTorchJob sets them (their `PET_` forms are --master-addr
/// and --master-port).
fn env_master() -> Option<String> {
    let addr = std::env::var("MASTER_ADDR").ok()?;
    let port = std::env::var("MASTER_PORT").ok()?;
    Some(format!("{addr}:{port}"))
}

/// What every rank runs: the binary, its arguments, and whether it is a program rather than
/// rankforge (see [`Plan::program`]). The command was checked to be non-empty without --config.
fn rank_command(args: &Args) -> Result<(PathBuf, Vec<String>, bool)> {
    let cmd = &args.command;
    if args.no_python || args.module || (args.rank_binary.is_none() && cmd.first().is_some_and(|c| c.ends_with(".py"))) {
        if args.config.is_some() {
            bail!("--config runs `rankforge train`; --no-python, -m and SCRIPT.py run a program instead: give one of them");
        }
        if args.no_python && args.module {
            bail!("-m runs a Python module; --no-python runs a program without Python: give one of them");
        }
        if args.no_python {
            let (prog, rest) = cmd.split_first().ok_or_else(|| anyhow!("--no-python: nothing to run: give the program after `--`"))?;
            return Ok((find_program(prog, "--no-python program")?, rest.to_vec(), true));
        }
        if cmd.is_empty() {
            bail!("-m: nothing to run: give the module after `--`");
        }
        let python = find_program(&args.python, "--python")?;
        let mut a: Vec<String> = if args.module { vec!["-u".into(), "-m".into()] } else { vec!["-u".into()] };
        a.extend(cmd.iter().cloned());
        return Ok((python, a, true));
    }
    let rank_binary = match &args.rank_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this executable")?.with_file_name("rankforge"),
    };
    if !rank_binary.exists() {
        bail!("the rank binary {} does not exist (build it, or pass --rank-binary)", rank_binary.display());
    }
    let rank_args = match &args.config {
        Some(config) => {
            let mut a = vec!["train".to_string(), "--config".into(), config.display().to_string()];
            for s in &args.set {
                a.push("--set".into());
                a.push(s.clone());
            }
            a
        }
        None => cmd.clone(),
    };
    let rankforge = rank_binary.file_name().is_some_and(|n| n.to_string_lossy().starts_with("rankforge"));
    Ok((rank_binary, rank_args, !rankforge))
}

/// `name` as a path (it has a `/`) or found in PATH, as a shell would run it.
fn find_program(name: &str, what: &str) -> Result<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if p.exists() { Ok(p) } else { bail!("{what} {name} does not exist") };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{what} {name}: no such program in PATH (give its path)"))
}

/// `N` or `MIN:MAX` → (MIN, MAX).
fn parse_nnodes(s: &str) -> Result<(u32, u32)> {
    let (lo, hi) = s.split_once(':').unwrap_or((s, s));
    let parse = |v: &str| v.trim().parse::<u32>().ok().filter(|n| *n > 0);
    match (parse(lo), parse(hi)) {
        (Some(a), Some(b)) if a <= b => Ok((a, b)),
        (Some(a), Some(b)) => bail!("--nnodes {s}: MIN ({a}) is larger than MAX ({b})"),
        _ => bail!("--nnodes {s:?}: expected N or MIN:MAX with 1 ≤ MIN ≤ MAX"),
    }
}

fn fnv_hex(s: &str) -> String {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfile_lines_and_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("hosts");
        std::fs::write(&p, "# cluster\nnode1 slots=4\n\nnode2   slots=2 # half\nnode3\n").unwrap();
        assert_eq!(parse_hostfile(&p).unwrap(), vec![("node1".into(), 4), ("node2".into(), 2), ("node3".into(), 1)]);
        std::fs::write(&p, "node1 slots=4\nnode2 slots=x\n").unwrap();
        let e = parse_hostfile(&p).unwrap_err().to_string();
        assert!(e.ends_with("hosts:2: expected `host slots=N` with N ≥ 1, found \"slots=x\""), "{e}");
    }

    #[test]
    fn nnodes_forms() {
        assert_eq!(parse_nnodes("2").unwrap(), (2, 2));
        assert_eq!(parse_nnodes("3:3").unwrap(), (3, 3));
        assert_eq!(parse_nnodes("1:4").unwrap(), (1, 4));
        assert!(parse_nnodes("3:2").unwrap_err().to_string().contains("MIN (3) is larger than MAX (2)"));
        assert!(parse_nnodes("0").is_err());
        assert!(parse_nnodes("0:2").is_err());
    }

    #[test]
    fn recipe_view_applies_overrides() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("r.toml");
        std::fs::write(&p, "[run]\ndir = \"runs/a\"\n[train]\ndevice = \"auto\"\n").unwrap();
        let v = recipe_view(&p, &["run.dir=runs/b".into(), "train.device=\"cpu\"".into()]).unwrap();
        assert_eq!((v.run_dir.unwrap(), v.device.unwrap()), (PathBuf::from("runs/b"), "cpu".to_string()));
    }

    #[test]
    fn a_recipe_syntax_error_is_one_line_naming_the_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("r.toml");
        std::fs::write(&p, "[run]\ndir = \"runs/a\"\n[train\nlr = 1\n").unwrap();
        let e = format!("{:#}", recipe_view(&p, &[]).unwrap_err());
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.starts_with(&format!("{}: line 3: ", p.display())), "{e}");
    }

    #[test]
    fn any_program_forms_as_torchrun_words_them() {
        let cmd = |argv: &[&str]| {
            let args = Args::try_parse_from(std::iter::once("rankforge-launch").chain(argv.iter().copied())).unwrap();
            rank_command(&args).map(|(bin, a, program)| (bin.display().to_string(), a, program))
        };
        // torchrun's `train.py ARGS` (after the flags or after `--`), `-m MODULE`, `--no-python PROG`.
        let sh = cmd(&["--nproc-per-node", "2", "--python", "/bin/sh", "train.py", "--lr", "1"]).unwrap();
        assert_eq!(sh, ("/bin/sh".into(), vec!["-u".into(), "train.py".into(), "--lr".into(), "1".into()], true));
        let m = cmd(&["-m", "--python", "/bin/sh", "--", "pkg.mod", "-x"]).unwrap();
        assert_eq!(m.1, ["-u", "-m", "pkg.mod", "-x"]);
        let prog = cmd(&["--no-python", "--", "sh", "-c", "true"]).unwrap();
        assert!(prog.0.ends_with("/sh") && prog.1 == ["-c", "true"] && prog.2, "{prog:?}");
        // A --rank-binary named rankforge* is a rankforge rank; any other is a program.
        let tmp = tempfile::tempdir().unwrap();
        let rf = tmp.path().join("rankforge-dev");
        std::fs::write(&rf, "").unwrap();
        assert!(!cmd(&["--rank-binary", rf.to_str().unwrap(), "--", "bench"]).unwrap().2);
        assert!(cmd(&["--rank-binary", "/bin/sh", "--", "-c", "true"]).unwrap().2);
        let e = cmd(&["--no-python", "--", "no-such-program-here"]).unwrap_err().to_string();
        assert_eq!(e, "--no-python program no-such-program-here: no such program in PATH (give its path)");
        assert!(cmd(&["-m", "--no-python", "--", "x"]).unwrap_err().to_string().contains("give one of them"));
    }

    #[test]
    fn hostport() {
        assert_eq!(parse_hostport("10.0.0.1:29400", "x").unwrap(), ("10.0.0.1".into(), 29400));
        assert_eq!(parse_hostport("[::1]:5", "x").unwrap(), ("::1".into(), 5));
        assert!(parse_hostport("host", "x").is_err());
    }
}
