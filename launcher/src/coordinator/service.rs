//! The tonic service: each RPC is one [`State`] call under the lock, waiting on
//! [`Shared`]'s changes where the call must block (joins, barriers).

use std::pin::Pin;
use std::sync::Arc;

use rankforge_proto::{command, coordinator_server, Command};
use rankforge_proto::{
    BarrierReply, BarrierRequest, CommandsRequest, HeartbeatReply, HeartbeatRequest, JoinNodeReply,
    JoinNodeRequest, JoinReply, JoinRequest, ReportReply, ReportRequest, StopReply, StopRequest,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::{Decision, Shared};

/// The tonic service.
#[derive(Clone)]
pub struct Service(pub Arc<Shared>);

type CommandStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Command, Status>> + Send>>;

#[tonic::async_trait]
impl coordinator_server::Coordinator for Service {
    async fn join_node(&self, req: Request<JoinNodeRequest>) -> Result<Response<JoinNodeReply>, Status> {
        let req = req.into_inner();
        self.0.wait_for(|st| st.join_node(&req)).await.map(Response::new)
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let req = req.into_inner();
        self.0.wait_for(|st| st.join(&req)).await.map(Response::new)
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        self.0.lock().heartbeat(&req.into_inner())?;
        Ok(Response::new(HeartbeatReply {}))
    }

    async fn barrier(&self, req: Request<BarrierRequest>) -> Result<Response<BarrierReply>, Status> {
        let req = req.into_inner();
        let payloads = self.0.wait_for(|st| st.barrier(&req)).await?;
        self.0.lock().barrier_collected(&req.name);
        Ok(Response::new(BarrierReply { payloads }))
    }

    async fn report(&self, req: Request<ReportRequest>) -> Result<Response<ReportReply>, Status> {
        let req = req.into_inner();
        let root = self.0.lock().report(&req)?;
        self.0.notify();
        if root.is_some() {
            self.0.clone().schedule_decision();
        }
        Ok(Response::new(ReportReply { failure: root.map(|f| f.to_string()).unwrap_or_default() }))
    }

    async fn stop(&self, req: Request<StopRequest>) -> Result<Response<StopReply>, Status> {
        let req = req.into_inner();
        {
            let mut st = self.0.lock();
            st.check(req.auth.as_ref())?;
            st.stop_requested.get_or_insert_with(|| req.reason.clone());
        }
        self.0.broadcast_stop(&req.reason, req.signal);
        Ok(Response::new(StopReply {}))
    }

    type CommandsStream = CommandStream;

    async fn commands(&self, req: Request<CommandsRequest>) -> Result<Response<CommandStream>, Status> {
        let req = req.into_inner();
        let aborted = {
            let st = self.0.lock();
            st.check(req.auth.as_ref())?;
            match &st.decision {
                Some(Decision::Abort { root, why }) => Some((root.clone(), why.clone())),
                _ => None,
            }
        };
        let (tx, rx) = mpsc::channel(16);
        if let Some((root, why)) = aborted {
            let reason = format!("{root}\n    ({why})");
            let _ = tx.try_send(Ok(Command { kind: command::Kind::Abort as i32, reason, exit_code: root.exit_code, ..Command::default() }));
        }
        if req.rank < 0 {
            // A launcher's stream lives as long as its node: when it closes early, the node is lost.
            let (shared, watched, node_rank) = (self.0.clone(), tx.clone(), req.node_rank);
            tokio::spawn(async move {
                watched.closed().await;
                let lost = {
                    let mut st = shared.lock();
                    let host = st.nodes.get(&node_rank).map(|(_, h)| h.clone()).unwrap_or_default();
                    let lost = st.node_disconnected(node_rank, &host);
                    if lost {
                        eprintln!("rankforge-launch: node {node_rank} ({host}): its launcher disconnected from the coordinator");
                    }
                    lost
                };
                if lost {
                    shared.notify();
                    shared.clone().schedule_decision();
                }
            });
        }
        self.0.subscribers.lock().expect("subscriber list lock poisoned by an earlier panic").push(tx);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
