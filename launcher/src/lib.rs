//! `rankforge-launch`: starts one `rankforge` rank per GPU (or CPU slot) on each host and, on
//! node 0, hosts the job's gRPC coordinator. This crate must never link libtorch: a login node
//! runs it (`scripts/test.sh` checks its dependency tree).
//!
//! - [`plan`]: flags, `PET_*`, Slurm and hostfile inputs → what this node does.
//! - [`coordinator`]: the coordinator's state machine, its timers and its gRPC service.
//! - [`node`]: this node's life: join, spawn ranks, relay their output, watch, tear down.
//! - `rank`: one rank process: its environment, start, output relay, error file, teardown.
//! - [`slurm`]: Slurm variables and a native hostlist expander.

pub mod coordinator;
pub mod node;
pub mod plan;
mod rank;
mod remote;
mod signals;
pub mod slurm;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rankforge_proto::coordinator_client::CoordinatorClient;
use rankforge_proto::coordinator_server::CoordinatorServer;
use rankforge_proto::ConnectError;
use tonic::transport::Channel;

/// An error in what the launcher was given (flags, recipe, an address that is taken or not this
/// host's): `rankforge-launch` exits 2 for it, like for its other bad input, not 1.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// The launcher's exit code for an error that ended it: 2 for [`BadInput`], else 1.
pub fn exit_code_of(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<BadInput>().is_some() { rankforge_proto::EXIT_BAD_INPUT } else { rankforge_proto::EXIT_RUNTIME }
}

/// Binds the coordinator on exactly `host:port` (never a wildcard address it was not given) and
/// serves it in the background. Returns the bound address. A port in use, or an address that is
/// not this host's, is [`BadInput`].
pub async fn serve(host: &str, port: u16, shared: Arc<coordinator::Shared>) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| anyhow!("--coordinator {host}:{port}: cannot resolve {host}: {e}"))?
        .collect();
    let addr = *addrs.first().ok_or_else(|| anyhow!("--coordinator {host}:{port}: {host} has no address"))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::Error::new(BadInput(format!(
            "cannot start the coordinator: {addr} is already in use (another job?); \
             pick another port, or --coordinator {host}:0 for a free one"
        ))),
        std::io::ErrorKind::AddrNotAvailable => anyhow::Error::new(BadInput(format!(
            "cannot start the coordinator on {addr}: it is not an address of this host; \
             node 0's launcher must run on the host it names"
        ))),
        _ => anyhow!("cannot start the coordinator on {addr}: {e}"),
    })?;
    let bound = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let service = CoordinatorServer::new(coordinator::Service(shared));
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            // A launcher whose host vanished (no FIN ever comes) is noticed by unanswered pings:
            // its connection, and so its command stream, closes and its node counts as lost.
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service).serve_with_incoming(incoming).await {
            eprintln!("rankforge-launch: coordinator stopped: {e}");
        }
    });
    Ok(bound)
}

/// Connects to the coordinator, retrying for up to `timeout` (node 0 may start later).
pub async fn connect(addr: &str, timeout: Duration) -> Result<CoordinatorClient<Channel>> {
    rankforge_proto::connect(addr, timeout).await.map_err(|e| match e {
        ConnectError::BadAddress(why) => anyhow!("coordinator address {addr:?} is not valid: {why}"),
        ConnectError::Unreachable(why) => anyhow!(
            "cannot reach the coordinator at {addr} after {:.0} s ({why}): is node 0's rankforge-launch running, \
             and is {addr} reachable from this host?",
            timeout.as_secs_f64()
        ),
    })
}
