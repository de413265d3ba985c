//! Device and precision selection from `[train] device / precision` (a GPU rank's own device:
//! [`crate::cuda`]), bf16 autocast ([`autocast`]), the memory check done before anything large
//! is allocated ([`check_fits`]), and the host allocator setting the CLI applies
//! ([`keep_freed_memory`]).

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::config::{DeviceChoice, ModelConfig, Precision, Recipe, TrainConfig};
use crate::error::{Error, Result};
use crate::models::gpt::GptConfig;
use crate::tokenizer::LoadedTokenizer;

/// Resolves the recipe's `train.device` to a device; `cuda` without a usable GPU is an error
/// naming the key.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    select_as(choice, "train.device")
}

/// Resolves `choice`, given as `key` (`train.device`, `--device`), to a device; `cuda`
/// without a usable GPU is an error naming `key`.
pub fn select_as(choice: DeviceChoice, key: &str) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => {
            let given = if key.starts_with("--") { format!("{key} cuda") } else { format!("{key} = \"cuda\"") };
            Err(Error::Input(format!("{given} but libtorch sees no CUDA device (CPU-only libtorch, no GPU, or no driver)")))
        }
    }
}

/// Refuses a recipe whose model and micro-batch cannot fit the device it will run on, before
/// anything is allocated: one error naming the recipe key behind the largest share and the
/// bytes needed. A lower bound is checked (fp32 weights, gradients and AdamW's two moments of
/// what trains, the frozen weights, one micro-batch's logits and their gradient, and for
/// pretraining the residual stream of each layer), so a run that fits is never refused; what
/// still runs out of memory later fails as a runtime error (exit 1). Problems the run itself
/// reports (no GPU, no tokenizer, a bad model directory) are left to it.
pub fn check_training_memory(recipe: &Recipe, file: &Path) -> Result<()> {
    let Ok(device) = select(recipe.train.device) else { return Ok(()) };
    let micro = recipe.train.micro_batch_size as u128;
    // (recipe key, bytes, what they are for)
    let mut parts: Vec<(&str, u128, String)> = Vec::new();
    match &recipe.model {
        ModelConfig::Gpt(m) => {
            // Without model.vocab_size the tokenizer decides it, as `rankforge train` does.
            let tok = match (m.vocab_size, recipe.data.sources().tokenizer.map(LoadedTokenizer::load)) {
                (Some(_), _) => None,
                (None, Some(Ok(tok))) => Some(tok),
                (None, _) => return Ok(()),
            };
            let Ok(cfg) = crate::tasks::pretrain::model_config(recipe, tok.as_ref().map(|t| (t.vocab_size(), t.path.as_path()))) else { return Ok(()) };
            let vocab = cfg.vocab_size;
            let (v, c, t, l) = (vocab as u128, m.n_embd as u128, m.block_size as u128, m.n_layer as u128);
            let embedding = v * c;
            // The logits (tokens × vocabulary) are blamed on the larger of the two factors.
            let logits = 8 * micro * t * v;
            let (by_vocab, by_batch) = if v >= micro * t { (logits, 0) } else { (0, logits) };
            let what = format!("the token embedding ({vocab} × model.n_embd = {}) with its AdamW state{}", m.n_embd, if by_vocab > 0 { ", and the logits" } else { "" });
            parts.push(("model.vocab_size", 16 * embedding + by_vocab, what));
            parts.push(("model.n_layer", 16 * (cfg.num_params() - embedding), "the other parameters with their AdamW state".into()));
            let what = format!("the activations of a micro-batch of {micro} × model.block_size = {t} tokens");
            parts.push(("train.micro_batch_size", 16 * micro * t * c * l + by_batch, what));
        }
        ModelConfig::Hf(h) => {
            let dir = &h.path;
            let Ok((path, value)) = crate::models::hf::read_config(dir) else { return Ok(()) };
            let (params, vocab) = match crate::models::hf::model_type(&path, &value)? {
                "gpt2" => GptConfig::from_hf_json(&path).map(|c| (c.num_params(), c.vocab_size))?,
                t if crate::models::llama::MODEL_TYPES.contains(&t) => {
                    crate::models::llama::LlamaConfig::from_hf_json(&path, &value).map(|c| (c.num_params(), c.vocab_size))?
                }
                _ => return Ok(()), // an unsupported family: loading the model says so

            };
            let per_param = if recipe.lora.is_some() { 4 } else { 16 };
            let what = if recipe.lora.is_some() { "the frozen weights (built in fp32)" } else { "the weights with their gradients and AdamW state (full fine-tuning)" };
            parts.push(("model.path", per_param * params, format!("{} ({params} parameters): {what}", dir.display())));
            let t = recipe.data.max_length().unwrap_or(1) as u128;
            parts.push(("train.micro_batch_size", micro * t * 8 * vocab as u128, format!("the logits of a micro-batch of {micro} × data.max_length = {t} tokens")));
        }
    }
    let need: u128 = parts.iter().map(|p| p.1).sum();
    let (key, _, what) = parts.iter().max_by_key(|p| p.1).expect("parts is not empty");
    check_fits(device, need).map_err(|msg| Error::Config {
        file: file.to_path_buf(),
        key: key.to_string(),
        msg: format!("training {msg}; the largest share is {what}: {}", human_bytes(parts.iter().map(|p| p.1).max().unwrap_or(0))),
    })
}

/// Refuses `need` bytes that `device` cannot hold, before they are allocated (libtorch's
/// allocation failures surface as panics inside tch). The CPU offers `MemAvailable` of
/// `/proc/meminfo`, a GPU its total memory. Returns the end of a message, "needs at least …,
/// more than the … available on …"; Ok when it fits or the memory is unknown.
pub fn check_fits(device: Device, need: u128) -> std::result::Result<(), String> {
    let Some((have, source)) = memory_available(device) else { return Ok(()) };
    if need <= have as u128 {
        return Ok(());
    }
    Err(format!("needs at least {}, more than the {} available ({source})", human_bytes(need), human_bytes(have as u128)))
}

/// Bytes `device` can hold and where the number comes from; None when unknown.
pub fn memory_available(device: Device) -> Option<(u64, String)> {
    match device {
        Device::Cuda(i) => crate::cuda::total_memory(i).map(|b| (b, format!("total memory of cuda:{i}"))),
        _ => {
            let text = std::fs::read_to_string("/proc/meminfo").ok()?;
            let kb: u64 = text.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some((kb * 1024, "MemAvailable in /proc/meminfo".into()))
        }
    }
}

/// `n` bytes as "1.5 GB" (powers of 1000, as `free -H` and nvidia-smi's MB).
pub fn human_bytes(n: u128) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 { format!("{n} bytes") } else { format!("{v:.1} {}", units[i]) }
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
/// thousands of page faults per step, with the kernel zeroing every page. With no `mmap` for
/// allocations (`M_MMAP_MAX = 0`: even a step's 245 MB logits come from the heap) and no
/// trimming below 2 GiB, later steps reuse the earlier ones' memory and fault none (the seed
/// GPT faulted 245 k pages per step with the 32 MiB mmap threshold alone): 2–3% faster CPU
/// steps on the fine-tuning benchmark (BENCHMARKS.md, issue 5), 15–20% on the pretraining one
/// (issue 18). The cost: memory a step freed stays reserved by the process
/// (its peak is reached again next step anyway), plus the heap's fragmentation (the seed GPT's
/// peak RSS: 2.0 → 2.5 GB). Skipped when the user configured malloc (`MALLOC_*_` variables
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
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_checks_name_the_bytes() {
        assert_eq!(human_bytes(999), "999 bytes");
        assert_eq!(human_bytes(10_240_000_000_000), "10.2 TB");
        assert!(check_fits(Device::Cpu, 1).is_ok(), "a byte always fits");
        let (have, source) = memory_available(Device::Cpu).expect("Linux has /proc/meminfo");
        assert!(have > 0 && source.contains("MemAvailable"));
        let e = check_fits(Device::Cpu, u128::from(have) * 4).unwrap_err();
        assert!(e.starts_with("needs at least ") && e.ends_with("available (MemAvailable in /proc/meminfo)"), "{e}");
    }

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
