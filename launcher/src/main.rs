//! `rankforge-launch`: starts one `rankforge train` rank per GPU (or CPU slot) on each host and
//! hosts the gRPC coordinator. This crate must never link libtorch: a login node runs it.
//!
//! Status: skeleton. Until the launcher lands, it runs a single rank in the foreground with
//! the torchrun-compatible world-of-one environment, so scripts can already call it.

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;

#[derive(Parser)]
#[command(name = "rankforge-launch", version, about = "Start rankforge ranks (single-rank skeleton for now).")]
struct Args {
    /// The recipe, passed to every rank.
    #[arg(long)]
    config: PathBuf,
    /// Recipe overrides, passed to every rank.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// The rank binary (default: `rankforge` beside this executable).
    #[arg(long)]
    rank_binary: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = match args.rank_binary {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("rankforge"),
    };
    let mut cmd = Command::new(&binary);
    cmd.arg("train").arg("--config").arg(&args.config);
    for s in &args.set {
        cmd.arg("--set").arg(s);
    }
    for (k, v) in [("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"), ("GROUP_RANK", "0")] {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}
