//! NCCL between GPU ranks, bound by hand to the `libnccl.so.2` that libtorch itself loaded.
//!
//! The torch wheel ships NCCL as `nvidia/nccl/lib/libnccl.so.2` beside `torch/`, and
//! `libtorch_cuda.so` loads it through its own `$ORIGIN` runpath. Generic bindings (cudarc
//! 0.19) look for other file names (`libnccl.so`, `libnccl.so.12`, …) and panic when none is
//! found, so rankforge opens the library itself, in this order:
//! 1. `$RANKFORGE_NCCL` (a path), when set;
//! 2. the `libnccl.so.2` already in the process (libtorch_cuda's: one NCCL per process);
//! 3. `<libtorch>/../../nvidia/nccl/lib/libnccl.so.2` (the wheel's layout);
//! 4. `libnccl.so.2` on the library path.
//!
//! Every call checks its `ncclResult_t`; errors carry the code, `ncclGetErrorString` and
//! `ncclGetLastError`. Collectives run on the legacy default stream of the rank's current
//! device (set by [`crate::cuda::rank_device`]), the stream libtorch's kernels use, so they
//! are ordered with the backward pass without a sync — except the gradient buckets overlapped
//! with backward, which run on their own stream ([`super::stream`]). The communicator is destroyed
//! deliberately: [`Nccl::finish`] after a successful run, `ncclCommAbort` (local, never waits
//! for peers) on any other exit.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::os::unix::{Library, RTLD_NOW};
use tch::{Device, Kind, Tensor};

use super::stream::{Event, SideStream};
use crate::error::{Error, Result};

/// Environment variable naming the NCCL library file to use instead of libtorch's.
pub const NCCL_ENV: &str = "RANKFORGE_NCCL";

type NcclResult = c_int;
type Comm = *mut c_void;
/// `ncclFloat32`, `ncclSum` (nccl.h).
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; 128],
}

/// The NCCL entry points rankforge uses, resolved once.
pub struct Lib {
    /// Where the library came from (for logs and the GPU check).
    pub path: PathBuf,
    _lib: Library,
    get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> NcclResult,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> NcclResult,
    broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(Comm) -> NcclResult,
    comm_abort: unsafe extern "C" fn(Comm) -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    get_last_error: unsafe extern "C" fn(Comm) -> *const c_char,
}

fn symbol<T: Copy>(lib: &Library, path: &Path, name: &str) -> Result<T> {
    // SAFETY: T is the C signature of `name` from nccl.h (checked against NCCL 2.28's header).
    unsafe { lib.get::<T>(name.as_bytes()).map(|s| *s) }
        .map_err(|e| Error::Dist(format!("{}: not a usable NCCL library (no {name}: {e})", path.display())))
}

/// The file a loaded shared object came from, from `/proc/self/maps`.
pub(crate) fn loaded_path(file_name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().is_some_and(|n| n == file_name))
        .map(PathBuf::from)
}

/// The search of the module doc (steps 2–4), recording what it tried.
fn search(tried: &mut Vec<String>) -> Option<(Library, PathBuf)> {
    // SAFETY (each open): NCCL's initialisers have no side effects; RTLD_NOLOAD only returns a
    // library that is already loaded.
    if let Ok(l) = unsafe { Library::open(Some("libnccl.so.2"), RTLD_NOW | libc::RTLD_NOLOAD) } {
        return Some((l, loaded_path("libnccl.so.2").unwrap_or_else(|| "libnccl.so.2".into())));
    }
    tried.push("libnccl.so.2 loaded by libtorch".into());
    if let Some(p) = crate::cuda::libtorch_dir().map(|d| d.join("../../nvidia/nccl/lib/libnccl.so.2")) {
        if let Ok(l) = unsafe { Library::open(Some(&p), RTLD_NOW) } {
            return Some((l, p));
        }
        tried.push(p.display().to_string());
    }
    if let Ok(l) = unsafe { Library::open(Some("libnccl.so.2"), RTLD_NOW) } {
        return Some((l, "libnccl.so.2".into()));
    }
    tried.push("libnccl.so.2 on the library path".into());
    None
}

/// Opens NCCL: `explicit` (from `$RANKFORGE_NCCL`) or the search described in the module doc.
pub fn open(explicit: Option<&Path>) -> Result<Lib> {
    let (lib, path) = match explicit {
        // SAFETY: as in `search`.
        Some(p) => unsafe { Library::open(Some(p), RTLD_NOW) }
            .map(|l| (l, p.to_path_buf()))
            .map_err(|e| Error::Input(format!("{NCCL_ENV} = {}: cannot load it as a shared library: {e}", p.display())))?,
        None => {
            let mut tried = Vec::new();
            search(&mut tried).ok_or_else(|| {
                Error::Dist(format!(
                    "GPU ranks need NCCL, but no libnccl.so.2 was found (tried: {}); install torch with CUDA or set {NCCL_ENV} to the library file",
                    tried.join(", ")
                ))
            })?
        }
    };
    Ok(Lib {
        get_version: symbol(&lib, &path, "ncclGetVersion")?,
        get_unique_id: symbol(&lib, &path, "ncclGetUniqueId")?,
        comm_init_rank: symbol(&lib, &path, "ncclCommInitRank")?,
        all_reduce: symbol(&lib, &path, "ncclAllReduce")?,
        broadcast: symbol(&lib, &path, "ncclBroadcast")?,
        comm_destroy: symbol(&lib, &path, "ncclCommDestroy")?,
        comm_abort: symbol(&lib, &path, "ncclCommAbort")?,
        get_error_string: symbol(&lib, &path, "ncclGetErrorString")?,
        get_last_error: symbol(&lib, &path, "ncclGetLastError")?,
        path,
        _lib: lib,
    })
}

/// The process's NCCL, opened once (`$RANKFORGE_NCCL` or the search in the module doc).
pub fn lib() -> Result<&'static Lib> {
    static LIB: OnceLock<std::result::Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(|| open(std::env::var_os(NCCL_ENV).map(PathBuf::from).as_deref()).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Dist(e.clone()))
}

fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: NCCL returns NUL-terminated static or per-communicator strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().trim().to_string()
}

/// `ncclResult_t`'s names (nccl.h).
fn result_name(code: NcclResult) -> &'static str {
    match code {
        0 => "ncclSuccess",
        1 => "ncclUnhandledCudaError",
        2 => "ncclSystemError",
        3 => "ncclInternalError",
        4 => "ncclInvalidArgument",
        5 => "ncclInvalidUsage",
        6 => "ncclRemoteError",
        7 => "ncclInProgress",
        _ => "unknown ncclResult_t",
    }
}

impl Lib {
    /// `ncclGetVersion` as (major, minor, patch): 22809 → (2, 28, 9).
    pub fn version(&self) -> Result<(u32, u32, u32)> {
        let mut v: c_int = 0;
        // SAFETY: `v` is a valid out pointer.
        self.check("get version", unsafe { (self.get_version)(&mut v) }, std::ptr::null_mut())?;
        let v = v as u32;
        Ok((v / 10000, (v % 10000) / 100, v % 100))
    }

    /// `Ok` for ncclSuccess, else an error with the code, its description and NCCL's last
    /// error message (for `comm`, or the global one when null).
    fn check(&self, what: &str, code: NcclResult, comm: Comm) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: both take any result code / communicator (null: the last global error).
        let (desc, last) = unsafe { (c_str((self.get_error_string)(code)), c_str((self.get_last_error)(comm))) };
        let last = if last.is_empty() { String::new() } else { format!("; last NCCL error: {last}") };
        Err(Error::Dist(format!(
            "NCCL {what} failed: {} (code {code}): {desc}{last} (library {})",
            result_name(code),
            self.path.display()
        )))
    }

    /// A new unique id (rank 0), as the 128 bytes every rank needs.
    pub fn unique_id(&self) -> Result<Vec<u8>> {
        let mut id = UniqueId { internal: [0; 128] };
        // SAFETY: `id` is a valid out pointer.
        self.check("get unique id", unsafe { (self.get_unique_id)(&mut id) }, std::ptr::null_mut())?;
        Ok(id.internal.iter().map(|c| *c as u8).collect())
    }
}

/// An NCCL communicator of one rank (one GPU per rank).
pub struct Nccl {
    lib: &'static Lib,
    comm: Comm,
    /// The rank's CUDA device (the current device when the communicator was made).
    device: Device,
    /// The gradient buckets' own stream (made at the first bucket), with this step's events:
    /// each started bucket's (start, end) on it, and the end of backward on the compute stream.
    side: Option<SideStream>,
    started: Vec<(Event, Event)>,
    backward_end: Option<Event>,
}

// SAFETY: the communicator is used from one thread at a time (the rank's training loop).
unsafe impl Send for Nccl {}

impl Nccl {
    /// Joins the communicator of `world` ranks whose unique id is `id` (rank 0's, 128 bytes),
    /// on `device` (the current CUDA device).
    pub fn init(lib: &'static Lib, id: &[u8], rank: usize, world: usize, device: Device) -> Result<Nccl> {
        let mut uid = UniqueId { internal: [0; 128] };
        if id.len() != uid.internal.len() {
            return Err(Error::Dist(format!("rank 0 sent an NCCL id of {} bytes, expected 128", id.len())));
        }
        for (d, s) in uid.internal.iter_mut().zip(id) {
            *d = *s as c_char;
        }
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out pointer; the rank's GPU is the current device.
        lib.check("init", unsafe { (lib.comm_init_rank)(&mut comm, world as c_int, uid, rank as c_int) }, std::ptr::null_mut())?;
        Ok(Nccl { lib, comm, device, side: None, started: Vec::new(), backward_end: None })
    }

    fn check_tensor(t: &Tensor) -> Result<()> {
        if !t.device().is_cuda() || t.kind() != Kind::Float || !t.is_contiguous() {
            return Err(Error::Dist(format!("NCCL needs a contiguous f32 CUDA tensor, got {:?} on {:?}", t.kind(), t.device())));
        }
        Ok(())
    }

    pub fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        Self::check_tensor(t)?;
        let p = t.data_ptr();
        // SAFETY: p points to numel f32 on this rank's GPU, alive until the stream runs it
        // (the tensor outlives the call and later kernels on the same stream).
        let code = unsafe { (self.lib.all_reduce)(p, p, t.numel(), NCCL_FLOAT32, NCCL_SUM, self.comm, std::ptr::null_mut()) };
        self.lib.check("all-reduce", code, self.comm)
    }

    pub fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        Self::check_tensor(t)?;
        let p = t.data_ptr();
        // SAFETY: as for all_reduce_sum.
        let code = unsafe { (self.lib.broadcast)(p, p, t.numel(), NCCL_FLOAT32, root as c_int, self.comm, std::ptr::null_mut()) };
        self.lib.check("broadcast", code, self.comm)
    }

    /// A gradient bucket's all-reduce on the buckets' own stream, after the compute stream's
    /// work so far (the bucket's flattening); see [`super::stream`].
    pub fn start_bucket(&mut self, t: &mut Tensor) -> Result<()> {
        Self::check_tensor(t)?;
        self.make_side()?;
        let side = self.side.as_ref().expect("made above");
        side.wait_for_compute()?;
        let start = side.record(false)?;
        let p = t.data_ptr();
        // SAFETY: p points to numel f32 on this rank's GPU; the caller keeps `t` alive until
        // `end_buckets` has made the compute stream wait for this stream.
        let code = unsafe { (self.lib.all_reduce)(p, p, t.numel(), NCCL_FLOAT32, NCCL_SUM, self.comm, side.stream) };
        self.lib.check("all-reduce", code, self.comm)?;
        self.started.push((start, side.record(false)?));
        Ok(())
    }

    /// Makes the buckets' stream on the calling thread's current device, at first use.
    fn make_side(&mut self) -> Result<()> {
        if self.side.is_none() {
            self.side = Some(SideStream::new()?);
        }
        Ok(())
    }

    /// Records the end of backward on the compute stream (the start of the exposed time).
    pub fn mark_backward_end(&mut self) -> Result<()> {
        self.make_side()?;
        let side = self.side.as_ref().expect("made above");
        let end = side.record(true)?;
        if let Some(old) = self.backward_end.replace(end) {
            side.destroy(old);
        }
        Ok(())
    }

    /// Makes the compute stream wait for the started buckets; returns their GPU time (the sum
    /// of each all-reduce's) and the part of it after backward's end (exposed).
    pub fn end_buckets(&mut self) -> Result<Option<super::buckets::Timing>> {
        let (Some(side), Some(&(_, last))) = (&self.side, self.started.last()) else {
            return Ok(None);
        };
        let timing = (|| {
            side.compute_waits(last)?;
            side.synchronize(last)?;
            let mut allreduce_s = 0.0;
            for &(a, b) in &self.started {
                allreduce_s += side.elapsed(a, b)?;
            }
            let exposed_s = match self.backward_end {
                Some(end) => {
                    side.synchronize(end)?;
                    side.elapsed(end, last)?.max(0.0)
                }
                None => allreduce_s,
            };
            Ok(super::buckets::Timing { allreduce_s, exposed_s })
        })();
        for (a, b) in self.started.drain(..) {
            side.destroy(a);
            side.destroy(b);
        }
        if let Some(end) = self.backward_end.take() {
            side.destroy(end);
        }
        timing.map(Some)
    }

    pub fn barrier(&mut self) -> Result<()> {
        let mut x = Tensor::zeros([1], (Kind::Float, self.device));
        self.all_reduce_sum(&mut x)?;
        crate::device::synchronize(self.device);
        Ok(())
    }

    /// Ends the communicator: `ok` (every rank finished its work) waits for this rank's
    /// queued collectives and destroys it (`ncclCommDestroy`, which every rank of the node
    /// calls at the end of a successful run); otherwise aborts it (`ncclCommAbort`: local,
    /// never waits for a peer that may be dead). Idempotent.
    pub fn finish(&mut self, ok: bool) {
        if self.comm.is_null() {
            return;
        }
        let comm = std::mem::replace(&mut self.comm, std::ptr::null_mut());
        if let Some(side) = &self.side {
            for (a, b) in self.started.drain(..) {
                side.destroy(a);
                side.destroy(b);
            }
        }
        if ok {
            crate::device::synchronize(self.device);
            // SAFETY: no collective is in flight (the device is synchronised); comm is not used again.
            match self.lib.check("destroy", unsafe { (self.lib.comm_destroy)(comm) }, std::ptr::null_mut()) {
                Ok(()) => return,
                Err(e) => tracing::warn!("{e}; aborting the communicator instead"),
            }
        }
        // SAFETY: comm is a live communicator (destroy failed or was not attempted); not used again.
        if let Err(e) = self.lib.check("abort", unsafe { (self.lib.comm_abort)(comm) }, std::ptr::null_mut()) {
            tracing::warn!("{e}");
        }
    }
}

impl Drop for Nccl {
    /// A communicator nobody finished belongs to a rank that is failing: abort it.
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The torch wheel's NCCL (the file cudarc's candidate names never matched) loads, on a
    /// CPU-only machine too, and is the 2.28 series torch 2.11.0+cu130 ships.
    #[test]
    fn the_wheels_nccl_loads_and_reports_2_28() {
        let lib = lib().unwrap();
        assert!(lib.path.ends_with("libnccl.so.2"), "{}", lib.path.display());
        let (major, minor, _) = lib.version().unwrap();
        assert_eq!((major, minor), (2, 28), "{}", lib.path.display());
        // Found by path too (what $RANKFORGE_NCCL gives), and a bad path is an input error.
        let wheel = crate::cuda::libtorch_dir().unwrap().join("../../nvidia/nccl/lib/libnccl.so.2");
        assert_eq!(open(Some(&wheel)).unwrap().version().unwrap().1, 28);
        let e = open(Some(Path::new("/nonexistent/libnccl.so.2"))).err().unwrap();
        assert!(matches!(e, Error::Input(_)) && e.to_string().contains("RANKFORGE_NCCL = /nonexistent/libnccl.so.2"), "{e}");
    }

    /// A failing NCCL call reports its code, NCCL's description and last error: rank 3 of a
    /// world of 1 is refused (on a machine without a GPU, the missing device is).
    #[test]
    fn nccl_errors_carry_code_and_message() {
        let lib = lib().unwrap();
        let id = lib.unique_id().unwrap();
        assert_eq!(id.len(), 128);
        let e = Nccl::init(lib, &id, 3, 1, Device::Cuda(0)).err().expect("rank 3 of 1 cannot join");
        let msg = e.to_string();
        assert!(msg.starts_with("NCCL init failed: nccl") && msg.contains("(code "), "{msg}");
        assert!(msg.contains("last NCCL error: "), "{msg}");
        assert!(Nccl::init(lib, &id[..5], 0, 1, Device::Cuda(0)).err().unwrap().to_string().contains("5 bytes"));
    }

    #[test]
    fn result_codes_are_named() {
        assert_eq!(result_name(1), "ncclUnhandledCudaError");
        assert_eq!(result_name(6), "ncclRemoteError");
        assert_eq!(result_name(42), "unknown ncclResult_t");
    }
}
