//! The CUDA facts tch's C API does not expose: which GPU a rank owns, making it the current
//! device before anything is allocated on it, its PCI bus id (so ranks can check that no two
//! share one), and where libtorch was loaded from (NCCL is found beside it).
//!
//! One GPU per rank, as `torch.cuda.set_device(local_rank)` does it: a rank whose
//! `CUDA_VISIBLE_DEVICES` names exactly one device (the launcher's GPU mode) takes device 0;
//! otherwise local rank `i` takes device `i` of the visible ones, and more local ranks than
//! visible GPUs is an error (the ranks would share a GPU, which NCCL refuses).
//! The CUDA runtime calls go to the `libcudart` libtorch_cuda loaded (C API, by `dlsym`).

use std::ffi::{c_char, c_int, CStr};
use std::path::PathBuf;

use libloading::os::unix::{Library, RTLD_NOW};
use tch::Device;

use crate::error::{Error, Result};

/// The directory of the libtorch in this process (`…/site-packages/torch/lib` for the wheel).
pub fn libtorch_dir() -> Option<PathBuf> {
    crate::dist::nccl::loaded_path("libtorch_cpu.so").and_then(|p| p.parent().map(|d| d.to_path_buf()))
}

/// The CUDA device ordinal of a rank: `isolated` when `CUDA_VISIBLE_DEVICES` names exactly one
/// device (it is then this rank's own), else local rank `local_rank` of `local_world` ranks on
/// this node takes visible device `local_rank`. Errors when the ranks would share a GPU.
pub fn cuda_ordinal(local_rank: usize, local_world: usize, visible: usize, isolated: bool) -> std::result::Result<usize, String> {
    if visible == 0 {
        return Err("libtorch sees no CUDA device".into());
    }
    if isolated {
        return Ok(0);
    }
    if local_world > visible || local_rank >= visible {
        return Err(format!(
            "{local_world} ranks on this node (LOCAL_WORLD_SIZE) but {visible} visible GPU(s): ranks would share a GPU (LOCAL_RANK {local_rank}); \
             start one rank per GPU (rankforge-launch --nproc-per-node gpu) or run on CPU (--set train.device=\"cpu\")"
        ));
    }
    Ok(local_rank)
}

fn env_usize(key: &str, default: usize) -> Result<usize> {
    match std::env::var(key) {
        Ok(v) => v.trim().parse().map_err(|_| Error::Input(format!("environment variable {key} = {v:?} is not a valid number"))),
        Err(_) => Ok(default),
    }
}

/// Whether `CUDA_VISIBLE_DEVICES` (its value) names exactly one device.
pub fn isolated(visible_devices: Option<&str>) -> bool {
    visible_devices.is_some_and(|v| v.split(',').filter(|s| !s.trim().is_empty()).count() == 1)
}

/// This rank's device for `device` (the result of `[train] device`): `cuda:<ordinal>` made the
/// current CUDA device before any allocation (NCCL uses the current device), or the CPU as is.
pub fn rank_device(device: Device) -> Result<Device> {
    if !device.is_cuda() {
        return Ok(device);
    }
    let (local_rank, local_world) = (env_usize("LOCAL_RANK", 0)?, env_usize("LOCAL_WORLD_SIZE", 1)?);
    let visible = tch::Cuda::device_count().max(0) as usize;
    let own = isolated(std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref());
    let ordinal = cuda_ordinal(local_rank, local_world, visible, own).map_err(Error::Input)?;
    set_device(ordinal)?;
    Ok(Device::Cuda(ordinal))
}

/// The CUDA runtime libtorch loaded.
pub(crate) fn cudart() -> Result<Library> {
    for name in ["libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"] {
        // SAFETY: RTLD_NOLOAD only returns a library already in the process.
        if let Ok(l) = unsafe { Library::open(Some(name), RTLD_NOW | libc::RTLD_NOLOAD) } {
            return Ok(l);
        }
    }
    Err(Error::Dist("no CUDA runtime (libcudart) is loaded: this libtorch was built without CUDA".into()))
}

pub(crate) fn cuda_check(lib: &Library, what: &str, code: c_int) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: cudaGetErrorString(cudaError_t) -> const char* (static strings).
    let msg = unsafe { lib.get::<unsafe extern "C" fn(c_int) -> *const c_char>(b"cudaGetErrorString") }
        .ok()
        .map(|f| unsafe { CStr::from_ptr(f(code)) }.to_string_lossy().into_owned())
        .unwrap_or_default();
    Err(Error::Dist(format!("CUDA {what} failed: error {code}: {msg}")))
}

/// `cudaSetDevice(ordinal)` on the calling thread.
pub fn set_device(ordinal: usize) -> Result<()> {
    let lib = cudart()?;
    // SAFETY: cudaSetDevice(int) -> cudaError_t.
    let f = unsafe { lib.get::<unsafe extern "C" fn(c_int) -> c_int>(b"cudaSetDevice") }
        .map_err(|e| Error::Dist(format!("libcudart has no cudaSetDevice: {e}")))?;
    cuda_check(&lib, &format!("set device {ordinal}"), unsafe { f(ordinal as c_int) })
}

/// The calling thread's current CUDA device (`cudaGetDevice`).
pub fn current_device() -> Result<usize> {
    let lib = cudart()?;
    // SAFETY: cudaGetDevice(int*) -> cudaError_t.
    let f = unsafe { lib.get::<unsafe extern "C" fn(*mut c_int) -> c_int>(b"cudaGetDevice") }
        .map_err(|e| Error::Dist(format!("libcudart has no cudaGetDevice: {e}")))?;
    let mut d: c_int = -1;
    cuda_check(&lib, "get device", unsafe { f(&mut d) })?;
    Ok(d as usize)
}

/// The PCI bus id of device `ordinal` (`0000:17:00.0`), the same in every process on a host.
pub fn pci_bus_id(ordinal: usize) -> Result<String> {
    let lib = cudart()?;
    // SAFETY: cudaDeviceGetPCIBusId(char*, int len, int device) -> cudaError_t.
    let f = unsafe { lib.get::<unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int>(b"cudaDeviceGetPCIBusId") }
        .map_err(|e| Error::Dist(format!("libcudart has no cudaDeviceGetPCIBusId: {e}")))?;
    let mut buf = [0 as c_char; 64];
    cuda_check(&lib, &format!("PCI bus id of device {ordinal}"), unsafe { f(buf.as_mut_ptr(), buf.len() as c_int, ordinal as c_int) })?;
    // SAFETY: the runtime wrote a NUL-terminated string into buf.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// The first two ranks (by rank) whose GPU ids (`host/bus id`, by rank) are equal.
pub fn shared_gpu(ids: &[String]) -> Option<(usize, usize)> {
    ids.iter().enumerate().find_map(|(j, b)| ids[..j].iter().position(|a| a == b).map(|i| (i, j)))
}

/// Total memory of CUDA device `index`, from the driver (`cuDeviceTotalMem_v2`, which needs no
/// context); None without a driver.
pub fn total_memory(index: usize) -> Option<u64> {
    type Init = unsafe extern "C" fn(u32) -> i32;
    type Get = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type TotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    // SAFETY: dlopen/dlsym with NUL-terminated names; the symbols are cast to the signatures
    // the CUDA driver API documents for them (CUresult = int, CUdevice = int, size_t bytes).
    unsafe {
        let lib = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if lib.is_null() {
            return None;
        }
        let sym = |name: &std::ffi::CStr| libc::dlsym(lib, name.as_ptr());
        let (init, get, total) = (sym(c"cuInit"), sym(c"cuDeviceGet"), sym(c"cuDeviceTotalMem_v2"));
        if init.is_null() || get.is_null() || total.is_null() {
            return None;
        }
        let (init, get, total): (Init, Get, TotalMem) = (std::mem::transmute(init), std::mem::transmute(get), std::mem::transmute(total));
        let (mut dev, mut bytes) = (0i32, 0usize);
        if init(0) != 0 || get(&mut dev, index as i32) != 0 || total(&mut bytes, dev) != 0 {
            return None;
        }
        Some(bytes as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gpu_per_local_rank() {
        // torchrun's convention: local rank i on visible device i.
        assert_eq!(cuda_ordinal(0, 1, 1, false), Ok(0));
        assert_eq!(cuda_ordinal(3, 4, 8, false), Ok(3));
        assert_eq!(cuda_ordinal(7, 8, 8, false), Ok(7));
        // The launcher's GPU mode: each rank sees only its own GPU, as device 0.
        assert_eq!(cuda_ordinal(5, 8, 1, true), Ok(0));
        // More ranks than GPUs: they would share one.
        let e = cuda_ordinal(1, 2, 1, false).unwrap_err();
        assert!(e.contains("2 ranks on this node") && e.contains("1 visible GPU") && e.contains("share"), "{e}");
        assert!(cuda_ordinal(2, 4, 2, false).is_err());
        assert!(cuda_ordinal(0, 1, 0, false).unwrap_err().contains("no CUDA device"));
    }

    #[test]
    fn visible_devices_isolate_a_rank_only_when_naming_one() {
        assert!(isolated(Some("3")));
        assert!(isolated(Some("GPU-8c1f")));
        assert!(!isolated(Some("0,1")));
        assert!(!isolated(Some("")));
        assert!(!isolated(None));
    }

    #[test]
    fn ranks_sharing_a_gpu_are_found() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(shared_gpu(&ids(&["a/0000:17:00.0", "a/0000:65:00.0", "b/0000:17:00.0"])), None);
        assert_eq!(shared_gpu(&ids(&["a/0000:17:00.0", "a/0000:65:00.0", "a/0000:17:00.0"])), Some((0, 2)));
        assert_eq!(shared_gpu(&[]), None);
    }

    #[test]
    fn libtorch_is_found_in_the_process() {
        let dir = libtorch_dir().expect("libtorch_cpu.so is mapped");
        assert!(dir.join("libtorch_cpu.so").exists(), "{}", dir.display());
    }
}
