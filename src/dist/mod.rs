//! Data parallelism: who this rank is ([`RankContext`], from the launcher's environment), the
//! control plane ([`control`]), and the collectives that make N ranks train like one big batch
//! ([`Collective`]: [`Local`] for a world of one, [`ring::TcpRing`] between CPU ranks,
//! [`nccl::Nccl`] between GPUs).
//!
//! A rank started without `rankforge-launch` is a world of one: no control plane, no traffic.

pub mod buckets;
pub mod control;
pub mod hooks;
pub mod nccl;
pub mod ring;
pub mod stream;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rankforge_proto::{env as rfenv, hostname, Phase};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use control::{ControlPlane, RankStatus};

/// Tensors are broadcast in flat buckets of at most this many bytes (gradients are reduced in
/// buckets of `train.bucket_cap_mb`, [`buckets`]).
pub const BUCKET_BYTES: usize = 32 << 20;

/// This rank's place in the job, from the launcher's (torchrun-compatible) environment.
#[derive(Debug, Clone)]
pub struct RankContext {
    pub rank: usize,
    pub local_rank: usize,
    pub world_size: usize,
    pub node_rank: usize,
    pub generation: u64,
    /// `host:port` of the coordinator; `None` without a launcher.
    pub coordinator: Option<String>,
    pub token: String,
    /// The address this rank's ring listener binds (its node's advertised address).
    pub local_addr: String,
    pub join_timeout: Duration,
}

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> Result<T> {
    match std::env::var(key) {
        Ok(v) => v.trim().parse().map_err(|_| Error::Input(format!("environment variable {key} = {v:?} is not a valid number"))),
        Err(_) => Ok(default),
    }
}

impl RankContext {
    /// A world of one (no launcher).
    pub fn single() -> RankContext {
        RankContext {
            rank: 0,
            local_rank: 0,
            world_size: 1,
            node_rank: 0,
            generation: 0,
            coordinator: None,
            token: String::new(),
            local_addr: "127.0.0.1".into(),
            join_timeout: Duration::from_secs(300),
        }
    }

    pub fn from_env() -> Result<RankContext> {
        let world: usize = env_num("WORLD_SIZE", 1)?;
        let Ok(coordinator) = std::env::var(rfenv::COORDINATOR) else {
            if world > 1 {
                return Err(Error::Input(format!(
                    "WORLD_SIZE = {world} but {} is not set: start multi-rank jobs with rankforge-launch (torchrun's environment alone is not enough)",
                    rfenv::COORDINATOR
                )));
            }
            return Ok(RankContext::single());
        };
        let ctx = RankContext {
            rank: env_num("RANK", 0)?,
            local_rank: env_num("LOCAL_RANK", 0)?,
            world_size: world,
            node_rank: env_num("GROUP_RANK", 0)?,
            generation: env_num(rfenv::GENERATION, 0)?,
            coordinator: Some(coordinator),
            token: std::env::var(rfenv::JOB_TOKEN).unwrap_or_default(),
            local_addr: std::env::var(rfenv::LOCAL_ADDR).unwrap_or_else(|_| "127.0.0.1".into()),
            join_timeout: Duration::from_secs_f64(env_num(rfenv::JOIN_TIMEOUT, 300.0)?),
        };
        if ctx.rank >= ctx.world_size {
            return Err(Error::Input(format!("RANK = {} is not below WORLD_SIZE = {}", ctx.rank, ctx.world_size)));
        }
        Ok(ctx)
    }
}

/// Collective operations on flat, contiguous f32 tensors, in place.
pub trait Collective: Send {
    /// Sums `t` over all ranks; every rank ends with identical values.
    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()>;
    /// Copies rank `root`'s `t` to every rank.
    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<()>;
    fn name(&self) -> &'static str;
    /// Releases the collective's resources: `ok` when every rank finished its work (a
    /// graceful shutdown), else as a failing rank (never waiting for a peer).
    fn finish(&mut self, _ok: bool) {}

    // The gradient buckets' all-reduce ([`buckets`]), called from one thread per step.

    /// Starts summing bucket `t` over ranks. Returns with the sum in `t` (the default), or —
    /// where [`Collective::bucket_done_on_return`] is false (NCCL) — with the all-reduce queued
    /// on the collective's own stream after the compute stream's work so far; `t` must then
    /// stay alive, unread, until [`Collective::end_buckets`].
    fn start_bucket(&mut self, t: &mut Tensor) -> Result<()> {
        self.all_reduce_sum(t)
    }
    /// Whether [`Collective::start_bucket`] returns with the sum in place.
    fn bucket_done_on_return(&self) -> bool {
        true
    }
    /// The compute stream has received all of backward's work (to time the all-reduce that
    /// comes after it on the device).
    fn mark_backward_end(&mut self) -> Result<()> {
        Ok(())
    }
    /// Makes the compute stream wait for every started bucket. Returns the device's own timing
    /// when the collective has one (NCCL: [`buckets::Timing`] from CUDA events), else `None`.
    fn end_buckets(&mut self) -> Result<Option<buckets::Timing>> {
        Ok(None)
    }
}

/// A world of one: every operation is the identity.
pub struct Local;

impl Collective for Local {
    fn all_reduce_sum(&mut self, _t: &mut Tensor) -> Result<()> {
        Ok(())
    }
    fn broadcast(&mut self, _t: &mut Tensor, _root: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
    fn name(&self) -> &'static str {
        "local"
    }
}

/// The f32 storage of a flat CPU tensor.
fn cpu_f32(t: &mut Tensor) -> Result<&mut [f32]> {
    if t.device() != Device::Cpu || t.kind() != Kind::Float || !t.is_contiguous() {
        return Err(Error::Dist(format!("the CPU ring needs a contiguous f32 CPU tensor, got {:?} on {:?}", t.kind(), t.device())));
    }
    let n = t.numel();
    // SAFETY: a contiguous f32 tensor of n elements owns n floats at data_ptr; `t` is borrowed
    // mutably for the slice's lifetime.
    Ok(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) })
}

impl Collective for ring::TcpRing {
    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        let buf = cpu_f32(t)?;
        ring::TcpRing::all_reduce_sum(self, buf).map_err(|e| Error::Dist(e.to_string()))
    }
    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        let buf = cpu_f32(t)?;
        ring::TcpRing::broadcast(self, buf, root).map_err(|e| Error::Dist(e.to_string()))
    }
    fn barrier(&mut self) -> Result<()> {
        ring::TcpRing::barrier(self).map_err(|e| Error::Dist(e.to_string()))
    }
    fn name(&self) -> &'static str {
        "tcp-ring"
    }
}

impl Collective for nccl::Nccl {
    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        nccl::Nccl::all_reduce_sum(self, t)
    }
    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        nccl::Nccl::broadcast(self, t, root)
    }
    fn barrier(&mut self) -> Result<()> {
        nccl::Nccl::barrier(self)
    }
    fn name(&self) -> &'static str {
        "nccl"
    }
    fn finish(&mut self, ok: bool) {
        nccl::Nccl::finish(self, ok)
    }
    fn start_bucket(&mut self, t: &mut Tensor) -> Result<()> {
        nccl::Nccl::start_bucket(self, t)
    }
    fn bucket_done_on_return(&self) -> bool {
        false
    }
    fn mark_backward_end(&mut self) -> Result<()> {
        nccl::Nccl::mark_backward_end(self)
    }
    fn end_buckets(&mut self) -> Result<Option<buckets::Timing>> {
        nccl::Nccl::end_buckets(self)
    }
}

/// Joins the job's NCCL communicator on `device` (this rank's GPU, already current): rank 0's
/// unique id and every rank's GPU (`host/PCI bus id`) travel through coordinator barriers;
/// two ranks on one GPU are refused before NCCL would fail on them.
fn join_nccl(control: &mut ControlPlane, rank: usize, world: usize, device: Device) -> Result<nccl::Nccl> {
    let lib = nccl::lib()?;
    let Device::Cuda(ordinal) = device else {
        return Err(Error::Dist(format!("NCCL needs a CUDA device, got {device:?}")));
    };
    let gpu = format!("{}/{}", hostname(), crate::cuda::pci_bus_id(ordinal)?);
    let gpus: Vec<String> = control.barrier("gpu-ids", gpu.into_bytes())?.into_iter().map(|b| String::from_utf8_lossy(&b).into_owned()).collect();
    if let Some((a, b)) = crate::cuda::shared_gpu(&gpus) {
        return Err(Error::Input(format!(
            "ranks {a} and {b} would share GPU {}: one GPU per rank (set CUDA_VISIBLE_DEVICES per rank, or let rankforge-launch --nproc-per-node gpu do it)",
            gpus[a]
        )));
    }
    let payload = if rank == 0 { lib.unique_id()? } else { Vec::new() };
    let ids = control.barrier("nccl-unique-id", payload)?;
    let (major, minor, patch) = lib.version()?;
    tracing::debug!(library = %lib.path.display(), version = %format!("{major}.{minor}.{patch}"), "NCCL");
    nccl::Nccl::init(lib, &ids[0], rank, world, device)
}

/// The rank's view of the job: context, control plane and collective.
pub struct Dist {
    pub ctx: RankContext,
    control: Option<ControlPlane>,
    coll: Box<dyn Collective>,
    pub status: Arc<RankStatus>,
    pub hosts: Vec<String>,
}

impl Dist {
    /// A world of one.
    pub fn single() -> Dist {
        Dist { ctx: RankContext::single(), control: None, coll: Box::new(Local), status: Arc::default(), hosts: vec![hostname()] }
    }

    /// Started without a launcher: a world of one with no control plane.
    pub fn standalone(&self) -> bool {
        self.control.is_none()
    }

    /// Joins the job the launcher started (or returns a world of one): rendezvous with the
    /// recipe's hash, then the collective for `device`.
    pub fn init(recipe_hash: &str, device: Device) -> Result<Dist> {
        let ctx = RankContext::from_env()?;
        let Some(addr) = ctx.coordinator.clone() else {
            return Ok(Dist::single());
        };
        let mut control = ControlPlane::connect(&addr, &ctx.token, ctx.generation, ctx.rank as u32, ctx.join_timeout)?;
        let (listener, ring_addr) = if device.is_cuda() {
            (None, String::new())
        } else {
            let (l, a) = ring::listen(&ctx.local_addr).map_err(|e| {
                Error::Dist(format!("rank {}: cannot listen on {} ({}): {e}", ctx.rank, ctx.local_addr, rfenv::LOCAL_ADDR))
            })?;
            (Some(l), a)
        };
        let host = hostname();
        let reply = control.join(recipe_hash, &ring_addr, &host)?;
        if reply.world_size as usize != ctx.world_size {
            return Err(Error::Dist(format!(
                "the coordinator reports a world of {} ranks, the environment WORLD_SIZE = {}",
                reply.world_size, ctx.world_size
            )));
        }
        control.status.set_phase(Phase::Setup);
        control.start_background(Duration::from_secs_f64(env_num(rfenv::HEARTBEAT_INTERVAL, 2.0f64)?.max(0.05)));
        let status = control.status.clone();
        let coll: Box<dyn Collective> = match listener {
            None => Box::new(join_nccl(&mut control, ctx.rank, ctx.world_size, device)?),
            Some(l) => Box::new(
                ring::TcpRing::connect(l, ctx.rank, ctx.world_size, &reply.peers, &ctx.token, ctx.generation, ctx.join_timeout)
                    .map_err(|e| Error::Dist(format!("rank {}: cannot connect the CPU ring: {e}", ctx.rank)))?,
            ),
        };
        tracing::info!(rank = ctx.rank, world = ctx.world_size, collective = coll.name(), "joined the job");
        Ok(Dist { ctx, control: Some(control), coll, status, hosts: reply.hosts })
    }

    pub fn rank(&self) -> usize {
        self.ctx.rank
    }

    pub fn world(&self) -> usize {
        self.ctx.world_size
    }

    /// `local` (a world of one), `tcp-ring` or `nccl`.
    pub fn collective_name(&self) -> &'static str {
        self.coll.name()
    }

    /// Rank 0 writes metrics, checkpoints and `final/`.
    pub fn is_main(&self) -> bool {
        self.ctx.rank == 0
    }

    fn counted<T>(&mut self, f: impl FnOnce(&mut dyn Collective) -> Result<T>) -> Result<T> {
        let before = self.status.phase();
        self.status.set_phase(Phase::Collective);
        let out = f(self.coll.as_mut());
        self.status.collective_seq.fetch_add(1, Ordering::Relaxed);
        self.status.set_phase(before);
        out
    }

    /// A world of one whose collectives are no-ops. (NCCL at world 1 still runs, so the GPU
    /// path can be exercised on one GPU.)
    fn trivial(&self) -> bool {
        self.world() == 1 && self.coll.name() != "nccl"
    }

    pub fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        if self.trivial() {
            return Ok(());
        }
        self.counted(|c| c.all_reduce_sum(t))
    }

    pub fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        self.counted(|c| c.broadcast(t, root))
    }

    pub fn barrier(&mut self) -> Result<()> {
        self.counted(|c| c.barrier())
    }

    /// Every rank's `payload`, by rank, through the coordinator (small data only).
    pub fn gather_small(&mut self, name: &str, payload: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        match &mut self.control {
            Some(c) => c.barrier(name, payload),
            None => Ok(vec![payload]),
        }
    }

    /// Copies rank `root`'s values of `tensors` to every rank (flat buckets).
    pub fn broadcast_tensors(&mut self, tensors: &[Tensor], root: usize) -> Result<()> {
        if self.world() == 1 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        for range in buckets(tensors, BUCKET_BYTES / 4) {
            let parts: Vec<Tensor> = tensors[range.clone()].iter().map(|t| t.to_kind(Kind::Float).reshape([-1])).collect();
            let mut flat = Tensor::cat(&parts, 0);
            self.broadcast(&mut flat, root)?;
            let mut off = 0;
            for t in &tensors[range] {
                let n = t.numel() as i64;
                t.shallow_clone().copy_(&flat.narrow(0, off, n).view_as(t));
                off += n;
            }
        }
        Ok(())
    }
}

impl Drop for Dist {
    /// Ends the collective deliberately before the control plane goes: gracefully when this
    /// rank finished its run (phase `Done`, set by the recipe loops and the benches after their
    /// last collective), else as a failing rank (NCCL: abort, which never waits for a peer).
    fn drop(&mut self) {
        let ok = self.status.phase() == Phase::Done && !std::thread::panicking();
        self.coll.finish(ok);
    }
}

/// Consecutive index ranges of `tensors` holding at most `max_elems` elements each (a tensor
/// larger than that gets a bucket of its own). Always at least one (possibly empty) bucket.
fn buckets(tensors: &[Tensor], max_elems: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, t) in tensors.iter().enumerate() {
        let n = t.numel();
        if size > 0 && size + n > max_elems {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += n;
    }
    out.push(start..tensors.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_by_size_and_keep_order() {
        let ts: Vec<Tensor> = [3, 3, 5, 1, 10, 2].iter().map(|n| Tensor::zeros([*n], (Kind::Float, Device::Cpu))).collect();
        assert_eq!(buckets(&ts, 6), vec![0..2, 2..4, 4..5, 5..6]);
        assert_eq!(buckets(&ts, 100), vec![0..6]);
        assert_eq!(buckets(&[], 10), vec![0..0]);
    }
}
