//! `rankforge-launch`: starts one `rankforge` rank per GPU (or CPU slot) on each host and, on
//! node 0, hosts the job's gRPC coordinator. This crate must never link libtorch: a login node
//! runs it (`scripts/test.sh` checks its dependency tree).
//!
//! - [`plan`]: flags, `PET_*`, Slurm and hostfile inputs → what this node does.
//! - [`coordinator`]: the coordinator's state machine and gRPC service.
//! - [`node`]: this node's life: join, spawn ranks, relay their output, watch, tear down.
//! - [`slurm`]: Slurm variables and a native hostlist expander.

pub mod coordinator;
pub mod node;
pub mod plan;
pub mod slurm;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rankforge_proto::coordinator_client::CoordinatorClient;
use rankforge_proto::coordinator_server::CoordinatorServer;
use rankforge_proto::ConnectError;
use tonic::transport::Channel;

/// Binds the coordinator on exactly `host:port` (never a wildcard address it was not given) and
/// serves it in the background. Returns the bound address.
pub async fn serve(host: &str, port: u16, shared: Arc<coordinator::Shared>) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| anyhow!("--coordinator {host}:{port}: cannot resolve {host}: {e}"))?
        .collect();
    let addr = *addrs.first().ok_or_else(|| anyhow!("--coordinator {host}:{port}: {host} has no address"))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow!("cannot start the coordinator: {addr} is already in use (another job?); pick another port, or --coordinator {host}:0 for a free one")
        } else {
            anyhow!("cannot start the coordinator on {addr}: {e}")
        }
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
