//! Hostfile mode: node 0's launcher starts the other nodes' launchers over ssh.

use std::process::Stdio;

use anyhow::{anyhow, Context, Result};
use rankforge_proto::env as rfenv;
use tokio::process::Command;

use crate::plan::{Args, Plan};

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Hostfile mode: starts node i's launcher on host i over `$RANKFORGE_SSH` (default `ssh`),
/// in the same working directory; the job token travels on ssh's stdin, not its command line.
pub(crate) fn start_remotes(args: &Args, plan: &Plan, coord_addr: &str) -> Result<Vec<(String, tokio::process::Child)>> {
    if plan.remotes.is_empty() {
        return Ok(Vec::new());
    }
    let ssh = std::env::var("RANKFORGE_SSH").unwrap_or_else(|_| "ssh -o BatchMode=yes".into());
    let mut ssh = ssh.split_whitespace().map(str::to_string);
    let ssh_bin = ssh.next().ok_or_else(|| anyhow!("RANKFORGE_SSH is empty"))?;
    let ssh_args: Vec<String> = ssh.collect();
    let exe = std::env::current_exe()?;
    let cwd = std::env::current_dir()?;
    let mut out = Vec::new();
    for node in &plan.remotes {
        let mut a: Vec<String> = vec![
            exe.display().to_string(),
            "--nnodes".into(),
            format!("{}:{}", plan.min_nodes, plan.nnodes),
            "--last-call".into(),
            args.last_call.to_string(),
            "--node-rank".into(),
            node.node_rank.to_string(),
            "--nproc-per-node".into(),
            node.slots.to_string(),
            "--coordinator".into(),
            coord_addr.into(),
            "--join-timeout".into(),
            args.join_timeout.to_string(),
            "--grace-period".into(),
            args.grace_period.to_string(),
            "--max-restarts".into(),
            args.max_restarts.to_string(),
            "--heartbeat-timeout".into(),
            args.heartbeat_timeout.to_string(),
            "--stall-timeout".into(),
            args.stall_timeout.to_string(),
            "--run-id".into(),
            plan.run_id.clone(),
            "--rank-binary".into(),
            plan.rank_binary.display().to_string(),
        ];
        if args.all_ranks {
            a.push("--all-ranks".into());
        }
        if let Some(d) = &args.log_dir {
            a.extend(["--log-dir".into(), d.display().to_string()]);
        }
        if let Some(c) = &args.config {
            a.extend(["--config".into(), c.display().to_string()]);
        }
        for s in &args.set {
            a.extend(["--set".into(), s.clone()]);
        }
        if plan.program {
            // The same program line (the Python and its -u, or --no-python's program).
            a.extend(["--no-python".into(), "--".into(), plan.rank_binary.display().to_string()]);
            a.extend(plan.rank_args.iter().cloned());
        } else if !args.command.is_empty() {
            a.push("--".into());
            a.extend(args.command.iter().cloned());
        }
        let remote = format!(
            "cd {} && read -r {tok} && export {tok} && exec {}",
            shell_quote(&cwd.display().to_string()),
            a.iter().map(|s| shell_quote(s)).collect::<Vec<_>>().join(" "),
            tok = rfenv::JOB_TOKEN
        );
        let mut child = Command::new(&ssh_bin)
            .args(&ssh_args)
            .arg(&node.host)
            .arg(remote)
            .stdin(Stdio::piped())
            .env_remove(rfenv::JOB_TOKEN)
            .spawn()
            .with_context(|| format!("cannot start {ssh_bin} to {}", node.host))?;
        let mut stdin = child.stdin.take().expect("piped");
        let token = format!("{}\n", plan.token);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(token.as_bytes()).await;
        });
        out.push((node.host.clone(), child));
    }
    Ok(out)
}
