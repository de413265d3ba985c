//! The fused AdamW kernel: libtorch's multi-tensor `_fused_adamw_` (what PyTorch's
//! `AdamW(fused=True)` calls), reached through rankforge's native extension
//! `csrc/fused_optim.cpp` because tch does not bind it. build.rs compiles the extension against
//! the headers of the libtorch that torch-sys links and sets `cfg(rankforge_fused)`; without it
//! (a compile failure, reported as a build warning) [`AVAILABLE`] is false and AdamW runs its
//! per-tensor loop.
//!
//! The kernel makes one pass over each tensor (read p, g, m, v; write p, m, v) where the loop
//! runs nine elementwise ops, and one call covers a whole group of tensors. rankforge still
//! owns the moments (checkpoints hold them) and the step count: the kernel reads the step from
//! a scalar tensor that [`super::AdamW`] sets from `AdamW::steps` before every call, so a
//! resumed or broadcast step count is the one used.

use tch::{TchError, Tensor};

/// Whether this build has the native extension (the fused kernel).
pub const AVAILABLE: bool = cfg!(rankforge_fused);

/// Hyper-parameters of one fused call.
#[derive(Debug, Clone, Copy)]
pub struct Hyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Decoupled decay (`p *= 1 - lr * weight_decay`); 0 for the no-decay group.
    pub weight_decay: f64,
    pub eps: f64,
}

/// One AdamW update of `params` in place (and of the moments `exp_avgs`, `exp_avg_sqs`), with
/// `grads`, at step `state_step` (a float32 scalar on the tensors' device: the bias corrections
/// use it; it is not incremented). All tensors: fp32, contiguous, one device, pairwise the same
/// shape. libtorch's error (a bad dtype, device or shape) comes back as `TchError::Torch`.
pub fn adamw_(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    state_step: &Tensor,
    h: Hyper,
) -> Result<(), TchError> {
    let n = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len()] != [n; 3] {
        return Err(TchError::Torch(format!(
            "fused AdamW: {n} params but {} grads, {} exp_avgs, {} exp_avg_sqs",
            grads.len(),
            exp_avgs.len(),
            exp_avg_sqs.len()
        )));
    }
    call(params, grads, exp_avgs, exp_avg_sqs, state_step, h)
}

#[cfg(rankforge_fused)]
fn call(p: &[Tensor], g: &[Tensor], m: &[Tensor], v: &[Tensor], step: &Tensor, h: Hyper) -> Result<(), TchError> {
    use std::ffi::{c_char, CStr};
    use torch_sys::C_tensor;
    extern "C" {
        fn rf_fused_adamw_(
            params: *const *const C_tensor,
            grads: *const *const C_tensor,
            exp_avgs: *const *const C_tensor,
            exp_avg_sqs: *const *const C_tensor,
            n: usize,
            state_step: *const C_tensor,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
        ) -> *mut c_char;
        fn rf_free_message(msg: *mut c_char);
    }
    let ptrs = |ts: &[Tensor]| ts.iter().map(Tensor::as_ptr).collect::<Vec<_>>();
    let (p, g, m, v) = (ptrs(p), ptrs(g), ptrs(m), ptrs(v));
    // SAFETY: every pointer is a live tch tensor handle (`torch::Tensor*`) borrowed for the
    // call; the arrays have `p.len()` entries (checked by `adamw_`); the C++ side catches every
    // exception and returns a message that we free with its own deallocator.
    let err = unsafe {
        rf_fused_adamw_(p.as_ptr(), g.as_ptr(), m.as_ptr(), v.as_ptr(), p.len(), step.as_ptr(), h.lr, h.beta1, h.beta2, h.weight_decay, h.eps)
    };
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string owned by the extension.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { rf_free_message(err) };
    Err(TchError::Torch(format!("fused AdamW: {msg}")))
}

#[cfg(not(rankforge_fused))]
fn call(_: &[Tensor], _: &[Tensor], _: &[Tensor], _: &[Tensor], _: &Tensor, _: Hyper) -> Result<(), TchError> {
    Err(TchError::Torch(
        "fused AdamW: this build has no native extension (csrc/fused_optim.cpp did not compile); use train.optimizer_impl = \"loop\"".into(),
    ))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use crate::config::{OptimizerImpl, TrainConfig};
    use crate::optim::AdamW;

    /// bert-base-uncased's parameters (109.5 M): embeddings, 12 layers, the pooler.
    fn bert_base_shapes() -> Vec<(String, Vec<i64>)> {
        let (h, ff) = (768, 3072);
        let mut out = vec![
            ("embeddings.word".to_string(), vec![30522, h]),
            ("embeddings.position".into(), vec![512, h]),
            ("embeddings.token_type".into(), vec![2, h]),
            ("embeddings.ln.w".into(), vec![h]),
            ("embeddings.ln.b".into(), vec![h]),
            ("pooler.w".into(), vec![h, h]),
            ("pooler.b".into(), vec![h]),
        ];
        for l in 0..12 {
            for (name, shape) in [("q", vec![h, h]), ("k", vec![h, h]), ("v", vec![h, h]), ("o", vec![h, h]), ("up", vec![ff, h]), ("down", vec![h, ff])] {
                out.push((format!("layer.{l}.{name}.w"), shape.clone()));
                out.push((format!("layer.{l}.{name}.b"), vec![shape[0]]));
            }
            for ln in ["ln1", "ln2"] {
                out.push((format!("layer.{l}.{ln}.w"), vec![h]));
                out.push((format!("layer.{l}.{ln}.b"), vec![h]));
            }
        }
        out
    }

    /// The optimizer step alone, fused vs loop, on BERT-base-sized fp32 parameters at 2
    /// threads: median of 5 steps per implementation in each of 3 alternating rounds.
    /// `cargo test --release -p rankforge --lib fused_adamw_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing to run by hand, not a check"]
    fn fused_adamw_speed_bert_base() {
        tch::set_num_threads(2);
        tch::manual_seed(0);
        let params: Vec<(String, Tensor)> =
            bert_base_shapes().into_iter().map(|(n, s)| (n, Tensor::randn(s, (Kind::Float, Device::Cpu)).set_requires_grad(true))).collect();
        let numel: i64 = params.iter().map(|(_, p)| p.numel() as i64).sum();
        params.iter().map(|(_, p)| (p * p).sum(Kind::Float)).fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, l| a + l).backward();
        let named = || params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect::<Vec<_>>();
        let cfg = |imp| TrainConfig { weight_decay: 0.01, optimizer_impl: Some(imp), ..TrainConfig::default() };
        let mut opts = [AdamW::new(named(), &cfg(OptimizerImpl::Loop)), AdamW::new(named(), &cfg(OptimizerImpl::Fused))];
        let mut ms: [Vec<f64>; 2] = [vec![], vec![]];
        for round in 0..3 {
            for (i, opt) in opts.iter_mut().enumerate() {
                let _ = opt.step(1e-5);
                let mut t: Vec<f64> = (0..5)
                    .map(|_| {
                        let start = std::time::Instant::now();
                        opt.step(1e-5).unwrap();
                        start.elapsed().as_secs_f64() * 1e3
                    })
                    .collect();
                t.sort_by(f64::total_cmp);
                println!("round {round} {:?}: median {:.1} ms (steps {t:.1?})", opt.implementation(), t[2]);
                ms[i].push(t[2]);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (looped, fused) = (median(&mut ms[0]), median(&mut ms[1]));
        println!("{numel} fp32 params, 2 threads: loop {looped:.1} ms, fused {fused:.1} ms, fused is {:.2}x faster", looped / fused);
    }
}
