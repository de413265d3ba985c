//! The rankforge control-plane protocol: the gRPC `Coordinator` service (rendezvous,
//! heartbeats, barriers, failure reports, restarts) that `rankforge-launch` hosts and every rank
//! talks to. The `.proto` definitions will live in `proto/rankforge/v1/`.
//!
//! Status: placeholder crate. The service definition and its generated code arrive with the
//! launcher (multi-rank training); see the README's feature list.
