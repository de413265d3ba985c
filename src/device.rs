//! Device and precision selection from `[train] device / precision`.

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
