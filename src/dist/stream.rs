//! NCCL's own CUDA stream for the overlapped gradient all-reduce, and the events that order it
//! with the compute stream and time it (CUDA runtime calls by `dlsym` into the libcudart
//! libtorch loaded, as in [`crate::cuda`]).
//!
//! The compute stream is the legacy default stream (null), where libtorch's kernels and the
//! backward pass run. The side stream is created non-blocking: a stream created plainly would
//! be implicitly synchronised with the legacy stream, and every backward kernel would wait for
//! the all-reduce queued before it — no overlap. Ordering is therefore explicit: a bucket's
//! all-reduce waits for an event recorded on the compute stream after the bucket was flattened,
//! and the compute stream waits for the last bucket's event before the gradients are used.
//! Nothing here is called on a CPU run.

use std::ffi::{c_int, c_uint, c_void};

use libloading::os::unix::Library;

use crate::error::{Error, Result};

/// `cudaStream_t`, `cudaEvent_t`.
pub type Stream = *mut c_void;
type RawEvent = *mut c_void;

/// An event [`SideStream::record`] created (the only way to get one), live until
/// [`SideStream::destroy`].
#[derive(Debug, Clone, Copy)]
pub struct Event(RawEvent);
/// The legacy default stream: libtorch's (and the backward pass's) compute stream.
const COMPUTE: Stream = std::ptr::null_mut();
/// `cudaStreamNonBlocking`.
const NON_BLOCKING: c_uint = 1;

/// A non-blocking stream of the current device, with the runtime entry points it uses.
pub struct SideStream {
    lib: Library,
    pub stream: Stream,
    event_create: unsafe extern "C" fn(*mut RawEvent) -> c_int,
    event_record: unsafe extern "C" fn(RawEvent, Stream) -> c_int,
    event_sync: unsafe extern "C" fn(RawEvent) -> c_int,
    event_elapsed: unsafe extern "C" fn(*mut f32, RawEvent, RawEvent) -> c_int,
    event_destroy: unsafe extern "C" fn(RawEvent) -> c_int,
    stream_wait: unsafe extern "C" fn(Stream, RawEvent, c_uint) -> c_int,
    stream_destroy: unsafe extern "C" fn(Stream) -> c_int,
}

fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T> {
    // SAFETY: T is the C signature of `name` in cuda_runtime_api.h (cudaError_t = int).
    unsafe { lib.get::<T>(name.as_bytes()).map(|s| *s) }.map_err(|e| Error::Dist(format!("libcudart has no {name}: {e}")))
}

impl SideStream {
    /// A new non-blocking stream on the calling thread's current device.
    pub fn new() -> Result<SideStream> {
        let lib = crate::cuda::cudart()?;
        let create: unsafe extern "C" fn(*mut Stream, c_uint) -> c_int = sym(&lib, "cudaStreamCreateWithFlags")?;
        let mut stream: Stream = std::ptr::null_mut();
        // SAFETY: `stream` is a valid out pointer.
        crate::cuda::cuda_check(&lib, "create the all-reduce stream", unsafe { create(&mut stream, NON_BLOCKING) })?;
        Ok(SideStream {
            event_create: sym(&lib, "cudaEventCreate")?,
            event_record: sym(&lib, "cudaEventRecord")?,
            event_sync: sym(&lib, "cudaEventSynchronize")?,
            event_elapsed: sym(&lib, "cudaEventElapsedTime")?,
            event_destroy: sym(&lib, "cudaEventDestroy")?,
            stream_wait: sym(&lib, "cudaStreamWaitEvent")?,
            stream_destroy: sym(&lib, "cudaStreamDestroy")?,
            stream,
            lib,
        })
    }

    fn check(&self, what: &str, code: c_int) -> Result<()> {
        crate::cuda::cuda_check(&self.lib, what, code)
    }

    /// A new (timing) event recorded on the side stream, or on the compute stream.
    pub fn record(&self, on_compute: bool) -> Result<Event> {
        let mut ev: RawEvent = std::ptr::null_mut();
        // SAFETY: `ev` is a valid out pointer; the stream is live.
        self.check("create an event", unsafe { (self.event_create)(&mut ev) })?;
        let stream = if on_compute { COMPUTE } else { self.stream };
        self.check("record an event", unsafe { (self.event_record)(ev, stream) })?;
        Ok(Event(ev))
    }

    /// Work queued on the side stream from now on waits for the compute stream's work so far.
    pub fn wait_for_compute(&self) -> Result<()> {
        let ev = self.record(true)?;
        // SAFETY: live stream and event; an event may be destroyed while a wait on it is queued.
        let r = self.check("order the all-reduce after backward", unsafe { (self.stream_wait)(self.stream, ev.0, 0) });
        self.destroy(ev);
        r
    }

    /// Work queued on the compute stream from now on waits for `ev`.
    pub fn compute_waits(&self, ev: Event) -> Result<()> {
        // SAFETY: live event; the legacy stream always exists.
        self.check("order the optimizer after the all-reduce", unsafe { (self.stream_wait)(COMPUTE, ev.0, 0) })
    }

    /// Blocks the host until `ev` completed.
    pub fn synchronize(&self, ev: Event) -> Result<()> {
        // SAFETY: live event.
        self.check("wait for an event", unsafe { (self.event_sync)(ev.0) })
    }

    /// Seconds from `a` to `b` (both completed).
    pub fn elapsed(&self, a: Event, b: Event) -> Result<f64> {
        let mut ms = 0f32;
        // SAFETY: valid out pointer, live completed events.
        self.check("time events", unsafe { (self.event_elapsed)(&mut ms, a.0, b.0) })?;
        Ok(f64::from(ms) / 1e3)
    }

    pub fn destroy(&self, ev: Event) {
        // SAFETY: a live event, not used again.
        let _ = unsafe { (self.event_destroy)(ev.0) };
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        // SAFETY: the stream is not used again (its queued work still completes).
        let _ = unsafe { (self.stream_destroy)(self.stream) };
    }
}
