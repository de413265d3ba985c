//! Device and precision selection from `[train] device / precision`, and the host allocator
//! setting the CLI applies ([`keep_freed_memory`]).

use tch::Device;

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
    let device = select(cfg.device)?;
    let bf16 = use_bf16(cfg.precision, device)?;
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n as i32);
    }
    Ok((device, bf16))
}

/// Whether to run forward passes under bf16 autocast.
pub fn use_bf16(precision: Precision, device: Device) -> Result<bool> {
    match (precision, device) {
        (Precision::Fp32, _) => Ok(false),
        (Precision::Auto, d) => Ok(d.is_cuda()),
        (Precision::Bf16, d) if d.is_cuda() => Ok(true),
        (Precision::Bf16, _) => Err(Error::Input("train.precision = \"bf16\" needs a CUDA device; use fp32 on CPU".into())),
    }
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
