//! Device and precision selection from `[train] device / precision` (a GPU rank's own device:
//! [`crate::cuda`]), bf16 autocast ([`autocast`]), and the host allocator setting the CLI
//! applies ([`keep_freed_memory`]).

use tch::{Device, Kind, Tensor};

use crate::config::{DeviceChoice, Precision, TrainConfig};
use crate::error::{Error, Result};

/// Resolves `choice` to a device; `cuda` without a usable GPU is an error naming the key.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(Error::Input(
            "train.device = \"cuda\" but libtorch sees no CUDA device (CPU-only libtorch, no GPU, or no driver)".into(),
        )),
    }
}

/// Applies `[train]`'s device, precision and thread settings: returns the device and whether
/// forward passes run under bf16 autocast.
pub fn setup(cfg: &TrainConfig) -> Result<(Device, bool)> {
    // A GPU rank's own device (LOCAL_RANK), current before anything is allocated on it.
    let device = crate::cuda::rank_device(select(cfg.device)?)?;
    let bf16 = use_bf16(cfg.precision, device)?;
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n as i32);
    }
    Ok((device, bf16))
}

/// Whether to run forward passes under bf16 autocast: `auto` on CUDA, `bf16` on any device
/// (on CPU as `torch.autocast("cpu", dtype=torch.bfloat16)`: usually slower than fp32 there).
pub fn use_bf16(precision: Precision, device: Device) -> Result<bool> {
    Ok(match precision {
        Precision::Fp32 => false,
        Precision::Auto => device.is_cuda(),
        Precision::Bf16 => true,
    })
}

/// Waits for the work queued on `device` (nothing to wait for on the CPU).
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// `t` (a host batch of token ids or labels) on `device`. To a GPU the copy goes through
/// pinned memory and does not block: the host queues the step's kernels while the batch is in
/// flight, where a pageable copy would wait for the GPU to drain first (PyTorch's
/// `pin_memory=True` + `.to(device, non_blocking=True)`). libtorch's caching pinned-memory
/// allocator keeps the staging buffer alive until the copy has run. (`_pin_memory`: the public
/// `pin_memory(device)` prints a deprecation warning for its device argument.) Should pinning
/// fail, the copy is a plain blocking one.
pub fn to_device(t: &Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) if t.device() == Device::Cpu => match t.f_internal_pin_memory(device) {
            Ok(pinned) => pinned.to_device_(device, t.kind(), true, false),
            Err(_) => t.to_device(device),
        },
        _ => t.to_device(device),
    }
}

/// libtorch's autocast API (`ATen/autocast_mode.h`), which tch's C wrapper does not expose
/// (`tch::autocast` only toggles the deprecated CUDA-only `set_enabled` and leaves CUDA's
/// autocast dtype at its default, fp16). These are plain C++ free functions exported by
/// libtorch_cpu.so; their arguments are `c10::DeviceType` and `c10::ScalarType`, both
/// `enum class : int8_t`, so the Itanium C++ ABI passes them exactly as C passes an `int8_t`.
/// The mangled names pin the signatures: a libtorch that changed them fails to link rather
/// than misbehave. None of them throws for the CPU and CUDA device types used here.
mod aten_autocast {
    extern "C" {
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub fn set_autocast_dtype(device: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub fn get_autocast_dtype(device: i8) -> i8;
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub fn is_autocast_enabled(device: i8) -> bool;
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub fn set_autocast_enabled(device: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast17increment_nestingEv"]
        pub fn increment_nesting() -> i32;
        #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
        pub fn decrement_nesting() -> i32;
        #[link_name = "_ZN2at8autocast11clear_cacheEv"]
        pub fn clear_cache();
    }
}

/// `c10::DeviceType` of `device` (CPU = 0, CUDA = 1).
fn device_type(device: Device) -> i8 {
    if device.is_cuda() { 1 } else { 0 }
}

/// `c10::ScalarType` values of the float kinds (Half = 5, Float = 6, BFloat16 = 15).
fn scalar_type_kind(t: i8) -> Option<Kind> {
    match t {
        5 => Some(Kind::Half),
        6 => Some(Kind::Float),
        15 => Some(Kind::BFloat16),
        _ => None,
    }
}
const SCALAR_BFLOAT16: i8 = 15;

/// The calling thread's autocast dtype for `device`'s type (thread-local in libtorch).
pub fn autocast_dtype(device: Device) -> Option<Kind> {
    // SAFETY: reads a thread-local (see `aten_autocast`).
    scalar_type_kind(unsafe { aten_autocast::get_autocast_dtype(device_type(device)) })
}

/// Restores the autocast state [`autocast`] changed, also when `f` unwinds.
struct AutocastGuard {
    device: i8,
    was_enabled: bool,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: see `aten_autocast`.
        unsafe {
            if aten_autocast::decrement_nesting() == 0 {
                aten_autocast::clear_cache();
            }
            aten_autocast::set_autocast_enabled(self.device, self.was_enabled);
        }
    }
}

/// Runs `f` (a forward pass) under bf16 autocast on `device`'s type when `bf16`, as
/// `with torch.autocast(device.type, dtype=torch.bfloat16):` does. The dtype is set on every
/// call because libtorch keeps it per thread (a fresh thread's CUDA dtype is fp16).
pub fn autocast<T>(device: Device, bf16: bool, f: impl FnOnce() -> T) -> T {
    if !bf16 {
        return f();
    }
    let dt = device_type(device);
    // SAFETY: thread-local autocast state only (see `aten_autocast`).
    let _guard = unsafe {
        aten_autocast::set_autocast_dtype(dt, SCALAR_BFLOAT16);
        let was_enabled = aten_autocast::is_autocast_enabled(dt);
        aten_autocast::set_autocast_enabled(dt, true);
        aten_autocast::increment_nesting();
        AutocastGuard { device: dt, was_enabled }
    };
    f()
}

/// Makes glibc's malloc keep freed memory for reuse instead of handing it back to the kernel,
/// for the CLI's processes (`main` calls it first). A training step allocates and frees the
/// same large activation and gradient buffers every step. By default glibc serves the big ones
/// with fresh `mmap`s (above a threshold that adapts up to 32 MiB) and trims the top of the
/// heap when more than twice that is free, so each step faults its memory in again: tens of
/// thousands of page faults per step, with the kernel zeroing every page. With the largest
/// mmap threshold glibc accepts (32 MiB) and no trimming below 2 GiB, later steps reuse the
/// earlier ones' memory: 2–3% faster CPU steps on the fine-tuning benchmark (BENCHMARKS.md,
/// issue 5). The cost: memory a step freed stays reserved by the process (its peak is reached
/// again next step anyway). Skipped when the user configured malloc (`MALLOC_*_` variables
/// or `GLIBC_TUNABLES` naming `glibc.malloc`), so their settings win. PyTorch gets the same
/// effect from the same variables, or from jemalloc/tcmalloc as its CPU tuning guide advises.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let configured = std::env::vars_os().any(|(k, v)| {
            let k = k.to_string_lossy();
            (k.starts_with("MALLOC_") && k.ends_with('_')) || (k == "GLIBC_TUNABLES" && v.to_string_lossy().contains("glibc.malloc"))
        });
        if configured {
            return;
        }
        // SAFETY: mallopt only changes allocator parameters; it is called before any other
        // thread exists (first thing in main), and glibc serialises it internally anyway.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(device: Device) -> bool {
        // SAFETY: reads a thread-local.
        unsafe { aten_autocast::is_autocast_enabled(device_type(device)) }
    }

    /// tch::autocast left CUDA's autocast dtype at libtorch's default, fp16; ours is bf16 on
    /// whichever thread runs the forward pass (no GPU is needed to read the setting).
    #[test]
    fn cuda_autocast_is_bf16_on_every_thread() {
        let gpu = Device::Cuda(0);
        let seen = std::thread::spawn(move || {
            let before = autocast_dtype(gpu);
            let inside = autocast(gpu, true, || (autocast_dtype(gpu), enabled(gpu)));
            (before, inside, enabled(gpu))
        })
        .join()
        .unwrap();
        assert_eq!(seen.0, Some(Kind::Half), "libtorch's default CUDA autocast dtype on a fresh thread");
        assert_eq!(seen.1, (Some(Kind::BFloat16), true), "inside autocast: bf16, enabled");
        assert!(!seen.2, "autocast is switched off again afterwards");
    }

    #[test]
    fn cpu_bf16_autocast_computes_in_bf16() {
        let (a, w) = (Tensor::randn([4, 8], (Kind::Float, Device::Cpu)), Tensor::randn([3, 8], (Kind::Float, Device::Cpu)));
        let y = autocast(Device::Cpu, true, || a.linear(&w, None::<&Tensor>));
        assert_eq!(y.kind(), Kind::BFloat16);
        let exact = a.linear(&w, None::<&Tensor>);
        assert_eq!(exact.kind(), Kind::Float, "outside autocast: fp32");
        let diff = (y.to_kind(Kind::Float) - &exact).abs().max().double_value(&[]);
        assert!(diff > 0.0 && diff < 0.1, "bf16 rounding, same function: {diff}");
        assert_eq!(autocast(Device::Cpu, false, || a.linear(&w, None::<&Tensor>)).kind(), Kind::Float);
    }

    #[test]
    fn precision_choices() {
        assert!(use_bf16(Precision::Auto, Device::Cuda(0)).unwrap());
        assert!(!use_bf16(Precision::Auto, Device::Cpu).unwrap());
        assert!(use_bf16(Precision::Bf16, Device::Cpu).unwrap());
        assert!(!use_bf16(Precision::Fp32, Device::Cuda(0)).unwrap());
    }
}
