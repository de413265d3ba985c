//! The gradient all-reduce in buckets, as PyTorch's DDP does it: the trainable parameters, in
//! reverse forward order, grouped by dtype into buckets of `train.bucket_cap_mb`; each bucket is
//! flattened into one f32 buffer, summed over ranks, and copied back (on the CPU, f32 gradients
//! become views of the summed buffer instead, and a bucket of one f32 gradient is summed in
//! place: DDP's `gradient_as_bucket_view`). [`Dist::reduce_grads`]
//! runs the buckets after backward; [`Dist::reduce_grads_overlapped`] runs them on a
//! communication thread while backward is still running, each as soon as backward has produced
//! all of its gradients (gradient-ready hooks, [`super::hooks`]).
//!
//! Both paths reduce the same buffers in the same order, so they give the same bits: the CPU
//! ring adds each element in an order fixed by its place in its bucket, the same either way.
//! Every rank launches the buckets in the same (plan) order, whatever order backward makes them
//! ready in: a bucket waits for the ones before it (DDP does the same).
//!
//! A parameter that gets no gradient in a step never makes its bucket ready; the bucket is
//! reduced once backward has returned, with zeros for it. The last bucket carries one flag per
//! parameter (whether it had a gradient on this rank) and the step's extra sums (loss, flags of
//! the coordinator): a parameter without a gradient on any rank keeps none (AdamW leaves it
//! alone, as on one rank); one without a gradient here but with one elsewhere receives the sum.

use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::hooks::{self, GradReadyHooks};
use super::{Collective, Dist};
use crate::error::{Error, Result};

/// What a step's gradient reduction took: the all-reduce time (per bucket: flatten, all-reduce,
/// copy back, summed; on NCCL the device's time of the all-reduces) and the part of it after
/// backward returned, which the step waits for (on NCCL: after backward's last kernel).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub allreduce_s: f64,
    pub exposed_s: f64,
}

impl Timing {
    /// The fraction of the all-reduce hidden behind backward (0 when there was none).
    pub fn overlap_fraction(&self) -> f64 {
        if self.allreduce_s > 0.0 {
            (1.0 - self.exposed_s / self.allreduce_s).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// The parameters of the reduction and their buckets.
pub struct Plan {
    /// The parameters that require grad, in the caller's order.
    params: Vec<Tensor>,
    layout: Layout,
}

/// Which parameter goes where (shared with the communication thread and the hooks).
struct Layout {
    /// Buckets in launch order, as indices into the parameters.
    buckets: Vec<Vec<usize>>,
    /// Each parameter's bucket.
    bucket_of: Vec<usize>,
}

/// One component of a parameter name, numbers compared as numbers (`h.2` before `h.10`).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Part<'a> {
    Num(u64),
    Text(&'a str),
}

/// A name's place in forward order: embeddings first, then numbered layers (in number order),
/// then the rest (final norm, heads). tch's variable stores do not keep registration order, so
/// this is read from the names every model here uses (`wte`, `embeddings`, `embed_tokens`;
/// `h.3`, `layer.3`, `layers.3`). A wrong guess costs overlap, never correctness.
fn forward_key(name: &str) -> (u8, Vec<Part<'_>>) {
    let parts: Vec<Part> = name.split('.').map(|p| p.parse().map_or(Part::Text(p), Part::Num)).collect();
    let embedding = name.split('.').any(|p| p.contains("emb") || p == "wte" || p == "wpe");
    let layered = parts.iter().any(|p| matches!(p, Part::Num(_)));
    (if embedding { 0 } else if layered { 1 } else { 2 }, parts)
}

fn element_size(kind: Kind) -> usize {
    match kind {
        Kind::Half | Kind::BFloat16 => 2,
        Kind::Double => 8,
        _ => 4,
    }
}

impl Plan {
    /// Buckets of the named parameters that require grad: reverse forward order, at most
    /// `cap_bytes` (in the parameters' dtype) per bucket unless one tensor is larger, one dtype
    /// per bucket. Ordered by their first parameter, as DDP orders them.
    pub fn new<'a>(named: impl IntoIterator<Item = (&'a str, &'a Tensor)>, cap_bytes: usize) -> Plan {
        let named: Vec<(&str, &Tensor)> = named.into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let keys: Vec<_> = named.iter().map(|(n, _)| forward_key(n)).collect();
        let mut order: Vec<usize> = (0..named.len()).collect();
        order.sort_by(|&a, &b| keys[a].cmp(&keys[b])); // stable: ties keep the caller's order
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        // Per dtype: the bucket being filled and its bytes.
        let mut open: Vec<(Kind, usize, usize)> = Vec::new();
        for &i in order.iter().rev() {
            let t = named[i].1;
            let (kind, bytes) = (t.kind(), t.numel() * element_size(t.kind()));
            match open.iter_mut().find(|o| o.0 == kind) {
                Some(o) if o.2 == 0 || o.2 + bytes <= cap_bytes => {
                    buckets[o.1].push(i);
                    o.2 += bytes;
                }
                Some(o) => {
                    buckets.push(vec![i]);
                    *o = (kind, buckets.len() - 1, bytes);
                }
                None => {
                    buckets.push(vec![i]);
                    open.push((kind, buckets.len() - 1, bytes));
                }
            }
        }
        if buckets.is_empty() {
            buckets.push(Vec::new()); // the extra sums still travel
        }
        let mut bucket_of = vec![0; named.len()];
        for (b, idx) in buckets.iter().enumerate() {
            idx.iter().for_each(|&i| bucket_of[i] = b);
        }
        Plan { params: named.iter().map(|(_, t)| t.shallow_clone()).collect(), layout: Layout { buckets, bucket_of } }
    }

    /// The buckets in launch order, as indices into the parameters given to [`Plan::new`] that
    /// require grad.
    pub fn buckets(&self) -> &[Vec<usize>] {
        &self.layout.buckets
    }
}

/// One step's reduction of a plan's buckets, in order, on one thread.
struct Run<'p> {
    plan: &'p Layout,
    /// The plan's parameters (this thread's handles).
    params: Vec<Tensor>,
    extra: Vec<f32>,
    device: Device,
    /// Per parameter: whether it had a gradient here when its bucket was flattened.
    defined: Vec<bool>,
    /// Reduced buffers not yet copied back (NCCL: until the compute stream has waited).
    pending: Vec<(usize, Tensor)>,
    /// Reduced slices of parameters without a gradient here (set if some rank had one).
    missing: Vec<(usize, Tensor)>,
    /// The reduced extra sums (from the last bucket).
    sums: Vec<f32>,
    allreduce_s: f64,
    /// Whether reduced f32 gradients become views of their bucket, and a bucket of one f32
    /// gradient is reduced in place (CPU, with the extension).
    in_place_views: bool,
}

impl<'p> Run<'p> {
    fn new(plan: &'p Plan, extra: &[f64]) -> Run<'p> {
        let device = plan.params.first().map_or(Device::Cpu, |p| p.device());
        let extra = extra.iter().map(|x| *x as f32).collect();
        let params: Vec<Tensor> = plan.params.iter().map(Tensor::shallow_clone).collect();
        let defined = vec![false; params.len()];
        let in_place_views = device == Device::Cpu && hooks::AVAILABLE;
        Run { plan: &plan.layout, params, extra, device, defined, pending: vec![], missing: vec![], sums: vec![], allreduce_s: 0.0, in_place_views }
    }

    /// Bucket `b` as one f32 buffer (gradients in f32 whatever their dtype; zeros for a missing
    /// one); the last bucket adds the gradient flags and the extra sums.
    fn flatten(&mut self, b: usize) -> Tensor {
        let idx = &self.plan.buckets[b];
        let last = b + 1 == self.plan.buckets.len();
        if let ([i], false, true) = (idx.as_slice(), last, self.in_place_views) {
            // A bucket of one f32 gradient (a large tensor, e.g. the embedding) is reduced in
            // place, without a copy: the ring sums it in the gradient's own memory.
            let g = self.params[*i].grad();
            if g.defined() && g.kind() == Kind::Float && g.is_contiguous() {
                self.defined[*i] = true;
                return g.view([-1]);
            }
        }
        let mut parts: Vec<Tensor> = Vec::with_capacity(idx.len() + 2);
        for &i in idx {
            let (p, g) = (&self.params[i], self.params[i].grad());
            self.defined[i] = g.defined();
            parts.push(if g.defined() { g.reshape([-1]).to_kind(Kind::Float) } else { Tensor::zeros([p.numel() as i64], (Kind::Float, self.device)) });
        }
        if last {
            let mut tail: Vec<f32> = self.defined.iter().map(|d| if *d { 1.0 } else { 0.0 }).collect();
            tail.extend(&self.extra);
            parts.push(Tensor::from_slice(&tail).to_device(self.device));
        }
        Tensor::cat(&parts, 0)
    }

    /// Flattens, all-reduces and (when the sum is in place) copies back bucket `b`.
    fn bucket(&mut self, coll: &mut dyn Collective, status: &super::control::RankStatus, b: usize) -> Result<()> {
        let t0 = Instant::now();
        let mut flat = self.flatten(b);
        coll.start_bucket(&mut flat)?;
        status.collective_seq.fetch_add(1, Ordering::Relaxed);
        if coll.bucket_done_on_return() {
            self.copy_back(b, &flat)?;
        } else {
            self.pending.push((b, flat));
        }
        self.allreduce_s += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// The reduced buffer of bucket `b` into the gradients it came from.
    fn copy_back(&mut self, b: usize, flat: &Tensor) -> Result<()> {
        let mut off = 0;
        for &i in &self.plan.buckets[b] {
            let p = &self.params[i];
            let n = p.numel() as i64;
            let part = flat.narrow(0, off, n);
            match self.defined[i] {
                // On the CPU an f32 gradient becomes its slice of the reduced buffer (DDP's
                // `gradient_as_bucket_view`), which saves copying the bucket back.
                true if self.in_place_views && p.kind() == Kind::Float => hooks::set_grad(p, &part.view_as(p))?,
                true => {
                    let g = p.grad();
                    g.shallow_clone().copy_(&part.view_as(&g));
                }
                false => self.missing.push((i, part)),
            }
            off += n;
        }
        if b + 1 == self.plan.buckets.len() {
            let tail = flat.narrow(0, off, (self.params.len() + self.extra.len()) as i64);
            self.sums = Vec::<f32>::try_from(tail.to_device(Device::Cpu))?;
        }
        Ok(())
    }

    /// After the last bucket: the deferred copies, the missing gradients, the extra sums.
    fn finish(mut self, coll: &mut dyn Collective, extra: &mut [f64]) -> Result<Timing> {
        let t0 = Instant::now();
        let device_timing = coll.end_buckets()?;
        for (b, flat) in std::mem::take(&mut self.pending) {
            self.copy_back(b, &flat)?;
        }
        let n = self.params.len();
        for (i, part) in std::mem::take(&mut self.missing) {
            if self.sums[i] > 0.0 {
                let p = &self.params[i];
                hooks::set_grad(p, &part.view_as(p).to_kind(p.kind()).copy())?;
            }
        }
        for (e, s) in extra.iter_mut().zip(&self.sums[n..]) {
            *e = f64::from(*s);
        }
        self.allreduce_s += t0.elapsed().as_secs_f64();
        Ok(device_timing.unwrap_or(Timing { allreduce_s: self.allreduce_s, exposed_s: 0.0 }))
    }
}

/// What the communication thread waits for: per bucket, its parameters still without this
/// backward's gradient; whether backward has returned (`Some(ok)`).
struct Ready {
    missing: Vec<usize>,
    backward: Option<bool>,
}

struct Shared {
    state: Mutex<Ready>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A gradient-ready hook: parameter `i`'s gradient is complete.
    fn param_ready(&self, plan: &Layout, i: usize) {
        let mut s = self.lock();
        let b = plan.bucket_of[i];
        s.missing[b] = s.missing[b].saturating_sub(1);
        if s.missing[b] == 0 {
            self.changed.notify_all();
        }
    }

    fn backward_returned(&self, ok: bool) {
        self.lock().backward = Some(ok);
        self.changed.notify_all();
    }

    /// Waits until bucket `b` is ready (`None`: never) or backward has returned; returns whether
    /// backward has returned (`Err` when it failed).
    fn wait(&self, b: Option<usize>) -> Result<bool> {
        let mut s = self.lock();
        while b.is_none_or(|b| s.missing[b] > 0) && s.backward.is_none() {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        match s.backward {
            Some(false) => Err(Error::Dist("backward failed: gradient all-reduce abandoned".into())),
            done => Ok(done.is_some()),
        }
    }
}

/// Tells the communication thread that backward failed, unless forgotten.
struct Signal<'a>(&'a Shared);

impl Drop for Signal<'_> {
    fn drop(&mut self) {
        self.0.backward_returned(false);
    }
}

/// The communication thread: the buckets in order, each once ready (or once backward has
/// returned), then the rest of the reduction.
fn communicate(mut run: Run<'_>, shared: &Shared, coll: &mut dyn Collective, status: &super::control::RankStatus, extra: &mut [f64]) -> Result<Timing> {
    let plan = run.plan;
    if let Device::Cuda(ordinal) = run.device {
        crate::cuda::set_device(ordinal)?; // the current device is per thread
    }
    let mut marked = false;
    for b in 0..plan.buckets.len() {
        if shared.wait(Some(b))? && !marked {
            coll.mark_backward_end()?;
            marked = true;
        }
        run.bucket(coll, status, b)?;
    }
    if !marked {
        shared.wait(None)?;
        coll.mark_backward_end()?;
    }
    run.finish(coll, extra)
}

impl Dist {
    /// Sums the gradients of `plan`'s parameters and `extra` over all ranks, after backward.
    /// `extra` rides in the last bucket and comes back summed.
    pub fn reduce_grads(&mut self, plan: &Plan, extra: &mut [f64]) -> Result<Timing> {
        if self.trivial() {
            return Ok(Timing::default());
        }
        let _guard = tch::no_grad_guard();
        let t0 = Instant::now();
        let mut run = Run::new(plan, extra);
        self.coll.mark_backward_end()?;
        for b in 0..plan.layout.buckets.len() {
            run.bucket(self.coll.as_mut(), &self.status, b)?;
        }
        let timing = run.finish(self.coll.as_mut(), extra)?;
        let wall = t0.elapsed().as_secs_f64();
        // On the CPU the whole reduction is exposed; NCCL reports its device time.
        Ok(if self.coll.bucket_done_on_return() { Timing { allreduce_s: wall, exposed_s: wall } } else { timing })
    }

    /// [`Dist::reduce_grads`] overlapped with `backward` (the last micro-batch's backward pass,
    /// run here): each bucket is all-reduced on a communication thread as soon as `backward`
    /// has produced its gradients, the rest once it has returned. Returns what `backward`
    /// returned once every bucket is reduced.
    pub fn reduce_grads_overlapped<E: Into<Error>>(
        &mut self,
        plan: &Plan,
        extra: &mut [f64],
        backward: impl FnOnce() -> std::result::Result<(), E>,
    ) -> Result<Timing> {
        if self.trivial() {
            return backward().map(|()| Timing::default()).map_err(Into::into);
        }
        let missing = plan.layout.buckets.iter().map(Vec::len).collect();
        let shared = Shared { state: Mutex::new(Ready { missing, backward: None }), changed: Condvar::new() };
        // The CPU's sums are in place when a bucket returns: the exposed part is the host's wait
        // after backward. NCCL measures it on the device.
        let host_timed = self.coll.bucket_done_on_return();
        let (coll, status) = (self.coll.as_mut(), &*self.status);
        let layout = &plan.layout;
        let on_ready = |i: usize| shared.param_ready(layout, i);
        let run = Run::new(plan, extra);
        std::thread::scope(|s| {
            let comm = s.spawn(|| {
                let _guard = tch::no_grad_guard();
                communicate(run, &shared, coll, status, extra)
            });
            // Should backward panic, the communication thread is told before the scope joins it.
            let signal = Signal(&shared);
            let ran = GradReadyHooks::register(&plan.params, &on_ready).map_err(Error::from).and_then(|hooks| {
                let r = backward().map_err(Into::into);
                drop(hooks);
                r
            });
            let t_end = Instant::now();
            std::mem::forget(signal);
            shared.backward_returned(ran.is_ok());
            let reduced = comm.join().unwrap_or_else(|_| Err(Error::Dist("the gradient all-reduce thread panicked".into())));
            let exposed_s = t_end.elapsed().as_secs_f64();
            ran?;
            let timing = reduced?;
            Ok(if host_timed { Timing { exposed_s, ..timing } } else { timing })
        })
    }
}

#[cfg(test)]
#[path = "buckets_tests.rs"]
mod tests;
