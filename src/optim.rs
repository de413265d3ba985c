//! The optimizer step: AdamW with state owned by rankforge (so checkpoints hold all of it),
//! global-norm gradient clipping and the learning-rate schedule.
//!
//! AdamW is PyTorch's `torch.optim.AdamW` (Loshchilov & Hutter 2019): decoupled weight decay
//! `p ← p·(1 − lr·wd)`, bias-corrected moments. Weight decay applies to matrices only
//! (dim ≥ 2: linear weights and embeddings), as in GPT-2/nanoGPT.
//!
//! Two implementations of the same update (`train.optimizer_impl`): [`fused`], libtorch's
//! multi-tensor kernel, one call per (device, decay) group — the default where the native
//! extension is built — and the per-tensor loop of nine elementwise ops, the fallback (and the
//! path of any tensor the kernel cannot take: a non-contiguous one). See docs/optimizer.md.

pub mod fused;

use tch::{Device, Kind, Tensor};

use crate::config::{OptimizerImpl, Schedule, TrainConfig};
use crate::error::{Error, Result};

/// One optimised parameter with its moments.
struct Slot {
    name: String,
    param: Tensor,
    /// The fp32 master copy of a parameter stored in a lower precision (bf16 weights): the
    /// update is applied to it, then rounded into `param`, so steps smaller than bf16's
    /// resolution accumulate instead of vanishing. `None` for fp32 parameters.
    master: Option<Tensor>,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

impl Slot {
    /// The fp32 tensor the update applies to: the master copy, else the parameter.
    fn weights(&self) -> Tensor {
        self.master.as_ref().unwrap_or(&self.param).shallow_clone()
    }

    /// Rounds the updated master copy into the (bf16) parameter.
    fn round_into_param(&self) {
        if let Some(m) = &self.master {
            self.param.shallow_clone().copy_(m);
        }
    }
}

/// The slots one fused kernel call updates: same device, same decay.
struct Group {
    slots: Vec<usize>,
    decay: bool,
    /// The step number the kernel reads (fp32 scalar on the group's device), set from
    /// `AdamW::steps` before each call.
    state_step: Tensor,
}

/// AdamW over named parameters.
pub struct AdamW {
    slots: Vec<Slot>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// The fused kernel's groups; `None`: the per-tensor loop for every slot.
    groups: Option<Vec<Group>>,
    /// Updates applied so far (bias correction uses it).
    pub steps: u64,
}

impl AdamW {
    /// `params`: (name, tensor) sorted by name; the state tensors are fp32 zeros like them,
    /// plus an fp32 master copy of every parameter that is not fp32 (mixed-precision training
    /// as PyTorch users know it: bf16 for compute, fp32 for the optimizer). The fused kernel
    /// unless `train.optimizer_impl = "loop"` or the build has no native extension.
    pub fn new(params: Vec<(String, Tensor)>, cfg: &TrainConfig) -> AdamW {
        let slots: Vec<Slot> = params
            .into_iter()
            .map(|(name, param)| Slot {
                decay: param.dim() >= 2 && cfg.weight_decay > 0.0,
                master: (param.kind() != Kind::Float).then(|| param.detach().to_kind(Kind::Float)),
                exp_avg: param.zeros_like().to_kind(Kind::Float),
                exp_avg_sq: param.zeros_like().to_kind(Kind::Float),
                name,
                param,
            })
            .collect();
        let fused = match cfg.optimizer_impl {
            Some(OptimizerImpl::Loop) => false,
            // Without the extension, config validation has refused "fused"; a caller that
            // skipped it gets the extension's error from `step`.
            Some(OptimizerImpl::Fused) => true,
            None => fused::AVAILABLE,
        };
        let groups = fused.then(|| fused_groups(&slots));
        AdamW { slots, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay, groups, steps: 0 }
    }

    /// Which implementation `step` runs.
    pub fn implementation(&self) -> OptimizerImpl {
        if self.groups.is_some() {
            OptimizerImpl::Fused
        } else {
            OptimizerImpl::Loop
        }
    }

    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.slots.iter().map(|s| &s.param)
    }

    /// The parameters with their names.
    pub fn named_params(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.param))
    }

    /// Clears every gradient, as PyTorch's `zero_grad(set_to_none=True)`: the next backward
    /// takes its gradient tensors as they come instead of adding them into zeroed ones (no
    /// memset, no extra pass), and a parameter that backward does not reach keeps none, so
    /// AdamW leaves it alone in that step, as PyTorch's does. Without the native extension
    /// (which sets `.grad`), the gradients are zeroed in place.
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            crate::dist::hooks::clear_grad(&mut s.param);
        }
    }

    /// One update with learning rate `lr`, using the gradients in `.grad()` (a parameter
    /// without one is left alone). Errors only if libtorch refuses the fused kernel's inputs.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.steps += 1;
        tch::no_grad(|| match &self.groups {
            Some(groups) => groups.iter().try_for_each(|g| self.fused_step(g, lr)),
            None => {
                self.slots.iter().for_each(|s| self.loop_step(s, lr));
                Ok(())
            }
        })
    }

    /// One kernel call over the group's slots that have a gradient; a slot whose tensors are
    /// not all contiguous (the kernel indexes memory linearly) takes the loop instead.
    fn fused_step(&self, group: &Group, lr: f64) -> Result<()> {
        let (mut params, mut grads, mut exp_avgs, mut exp_avg_sqs, mut rounded) = (vec![], vec![], vec![], vec![], vec![]);
        for s in group.slots.iter().map(|&i| &self.slots[i]) {
            let Some(g) = fp32_grad(s) else { continue };
            let w = s.weights();
            if ![&w, &g, &s.exp_avg, &s.exp_avg_sq].iter().all(|t| t.is_contiguous()) {
                self.loop_step(s, lr);
                continue;
            }
            params.push(w);
            grads.push(g);
            exp_avgs.push(s.exp_avg.shallow_clone());
            exp_avg_sqs.push(s.exp_avg_sq.shallow_clone());
            rounded.push(s);
        }
        if params.is_empty() {
            return Ok(());
        }
        let _ = group.state_step.shallow_clone().fill_(self.steps as f64);
        let weight_decay = if group.decay { self.weight_decay } else { 0.0 };
        let h = fused::Hyper { lr, beta1: self.beta1, beta2: self.beta2, weight_decay, eps: self.eps };
        fused::adamw_(&params, &grads, &exp_avgs, &exp_avg_sqs, &group.state_step, h)?;
        rounded.iter().for_each(|s| s.round_into_param());
        Ok(())
    }

    /// The per-tensor update: nine elementwise libtorch ops on one slot.
    fn loop_step(&self, s: &Slot, lr: f64) {
        let Some(g) = fp32_grad(s) else { return };
        let t = self.steps as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        let step_size = lr / bc1;
        let mut w = s.weights();
        if s.decay {
            let _ = w.g_mul_scalar_(1.0 - lr * self.weight_decay);
        }
        let _ = s.exp_avg.shallow_clone().lerp_(&g, 1.0 - self.beta1);
        let _ = s.exp_avg_sq.shallow_clone().lerp_(&(&g * &g), 1.0 - self.beta2);
        // denom = (sqrt(v) / sqrt(bc2) + eps) · (−1/step_size), so p += m / denom.
        let mut denom = s.exp_avg_sq.sqrt();
        let _ = denom.g_div_scalar_(bc2_sqrt).g_add_scalar_(self.eps).g_mul_scalar_(-1.0 / step_size);
        let _ = w.addcdiv_(&s.exp_avg, &denom);
        s.round_into_param();
    }

    /// Moments under `exp_avg.<name>` / `exp_avg_sq.<name>`, fp32 master weights under
    /// `master.<name>` (so a resumed bf16 run continues from the exact fp32 weights).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.slots.len());
        for s in &self.slots {
            out.push((format!("exp_avg.{}", s.name), s.exp_avg.shallow_clone()));
            out.push((format!("exp_avg_sq.{}", s.name), s.exp_avg_sq.shallow_clone()));
            if let Some(m) = &s.master {
                out.push((format!("master.{}", s.name), m.shallow_clone()));
            }
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`]; every slot must be present. `steps`
    /// (train_state.json's `optimizer_steps`) becomes [`AdamW::steps`], the step number both
    /// implementations' bias corrections use from the next update on.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, steps: u64, path: &std::path::Path) -> Result<()> {
        let mut map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        for s in &mut self.slots {
            for (prefix, dst) in [("exp_avg", &mut s.exp_avg), ("exp_avg_sq", &mut s.exp_avg_sq)] {
                let key = format!("{prefix}.{}", s.name);
                let src = map
                    .remove(&key)
                    .ok_or_else(|| Error::model(path, format!("optimizer state {key} is missing")))?;
                if src.size() != dst.size() {
                    return Err(Error::model(path, format!("optimizer state {key}: shape {:?}, the model needs {:?}", src.size(), dst.size())));
                }
                tch::no_grad(|| dst.copy_(&src));
            }
            // The master copy saved with the moments; without one (a checkpoint written before
            // master weights existed), a copy of the weights as loaded.
            if let Some(dst) = &mut s.master {
                let src = map.remove(&format!("master.{}", s.name)).unwrap_or_else(|| s.param.detach());
                if src.size() != dst.size() {
                    return Err(Error::model(path, format!("optimizer state master.{}: shape {:?}, the model needs {:?}", s.name, src.size(), dst.size())));
                }
                tch::no_grad(|| dst.copy_(&src));
            }
        }
        if let Some(extra) = map.keys().next() {
            return Err(Error::model(path, format!("optimizer state {extra} belongs to no parameter of this model")));
        }
        self.steps = steps;
        Ok(())
    }
}

/// The slot's gradient in fp32 (a bf16 parameter's is converted), or `None` without one.
fn fp32_grad(s: &Slot) -> Option<Tensor> {
    let g = s.param.grad();
    match g.defined() {
        false => None,
        true if g.kind() == Kind::Float => Some(g),
        true => Some(g.to_kind(Kind::Float)),
    }
}

/// Slots grouped by device (in order of first appearance) and decay, each with its step tensor.
fn fused_groups(slots: &[Slot]) -> Vec<Group> {
    let mut keys: Vec<(Device, bool)> = vec![];
    let mut groups: Vec<Group> = vec![];
    for (i, s) in slots.iter().enumerate() {
        let key = (s.param.device(), s.decay);
        let at = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
            keys.push(key);
            groups.push(Group { slots: vec![], decay: key.1, state_step: Tensor::zeros([], (Kind::Float, key.0)) });
            keys.len() - 1
        });
        groups[at].slots.push(i);
    }
    groups
}

/// Global L2 norm of all gradients; scales them down to `max_norm` when above it (0: never).
/// Returns the norm before clipping.
pub fn clip_grad_norm<'a>(params: impl Iterator<Item = &'a Tensor>, max_norm: f64) -> f64 {
    let grads: Vec<Tensor> = params.map(|p| p.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return 0.0;
    }
    // Low-precision gradients are summed in fp32 (their own dtype would round the norm).
    let norms: Vec<Tensor> =
        grads.iter().map(|g| if g.kind() == Kind::Float { g.norm() } else { g.norm_scalaropt_dtype(2, Kind::Float) }).collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    if max_norm > 0.0 && total.is_finite() {
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            tch::no_grad(|| {
                for g in &grads {
                    let _ = g.shallow_clone().g_mul_scalar_(coef);
                }
            });
        }
    }
    total
}

/// Learning rate for the update that makes step `step + 1` (`step` updates done before it) of
/// a run of `total_steps` (`train.max_steps`, or the steps `train.epochs` come to).
pub fn lr_at(step: u64, cfg: &TrainConfig, total_steps: u64) -> f64 {
    let warmup = cfg.warmup_steps;
    if step < warmup {
        return cfg.lr * (step + 1) as f64 / warmup as f64;
    }
    let decay = cfg.lr_decay_steps.unwrap_or(total_steps);
    if step >= decay {
        return match cfg.schedule {
            Schedule::Constant => cfg.lr,
            _ => cfg.min_lr,
        };
    }
    let ratio = (step - warmup) as f64 / (decay - warmup).max(1) as f64;
    match cfg.schedule {
        Schedule::Cosine => cfg.min_lr + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (cfg.lr - cfg.min_lr),
        Schedule::Linear => cfg.lr - ratio * (cfg.lr - cfg.min_lr),
        Schedule::Constant => cfg.lr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shapes() {
        let cfg = TrainConfig { lr: 1.0, min_lr: 0.1, warmup_steps: 10, ..TrainConfig::default() };
        assert!((lr_at(0, &cfg, 110) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, &cfg, 110) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, &cfg, 110) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, &cfg, 110) - 0.55).abs() < 1e-12); // cosine midpoint
        assert!((lr_at(200, &cfg, 110) - 0.1).abs() < 1e-12);
        let lin = TrainConfig { schedule: Schedule::Linear, ..cfg.clone() };
        assert!((lr_at(60, &lin, 110) - 0.55).abs() < 1e-12);
        let ext = TrainConfig { lr_decay_steps: Some(210), ..cfg };
        assert!(lr_at(60, &ext, 110) > 0.55, "a longer decay is slower");
    }

    /// bf16 weights (full fine-tuning with `model.dtype = "bf16"`): the step used to fail on
    /// fp32 moments meeting bf16 gradients. Now the update runs on an fp32 master copy, so it
    /// equals the fp32 optimizer's exactly (same gradients: the loss is linear in `p`), and
    /// updates far below bf16's resolution at 3.0 (2^-6) still accumulate.
    #[test]
    fn bf16_weights_train_through_fp32_master_weights() {
        let cfg = TrainConfig { weight_decay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, ..TrainConfig::default() };
        let init = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).view([2, 2]);
        let c = Tensor::from_slice(&[1.0f32, -0.5, 2.0, 0.25]).view([2, 2]);
        let run = |kind: Kind| {
            let p = init.copy().to_kind(kind).set_requires_grad(true);
            let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], &cfg);
            for _ in 0..50 {
                opt.zero_grad();
                (&p * c.to_kind(kind)).sum(Kind::Float).backward();
                opt.step(1e-4).unwrap();
            }
            (p, opt.state_tensors())
        };
        let (p32, state32) = run(Kind::Float);
        assert!(state32.iter().all(|(n, _)| !n.starts_with("master.")), "fp32 weights need no master copy");
        let (p16, state) = run(Kind::BFloat16);
        let master = &state.iter().find(|(n, _)| n == "master.p").expect("a master copy is saved").1;
        assert_eq!(master.kind(), Kind::Float);
        assert_eq!(p16.kind(), Kind::BFloat16, "the weights stay bf16");
        let diff = (master - &p32).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "master weights follow fp32 AdamW: {diff}");
        assert!(master.double_value(&[1, 0]) < 2.9955, "50 steps of ~1e-4 moved w from 3.0: {master}");
        assert!(p16.equal(&master.to_kind(Kind::BFloat16)), "the weights are the rounded master copy");
    }

    /// Pinned to PyTorch:
    /// ```python
    /// p = torch.tensor([[1.0, -2.0], [3.0, 0.5]], requires_grad=True); b = torch.tensor([0.5, -0.5], requires_grad=True)
    /// opt = torch.optim.AdamW([{"params": [p], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=0.01, betas=(0.9, 0.95), eps=1e-8)
    /// for i in range(3):
    ///     opt.zero_grad(); ((p ** 2).sum() * (i + 1) + (b ** 3).sum()).backward(); opt.step()
    /// print(p.tolist(), b.tolist())
    /// ```
    #[test]
    fn adamw_matches_pytorch() {
        assert!(fused::AVAILABLE, "build.rs did not build the native extension: see the build's warnings");
        for imp in [OptimizerImpl::Fused, OptimizerImpl::Loop] {
            let p = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).view([2, 2]).set_requires_grad(true);
            let b = Tensor::from_slice(&[0.5f32, -0.5]).set_requires_grad(true);
            let cfg = TrainConfig { weight_decay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, optimizer_impl: Some(imp), ..TrainConfig::default() };
            let mut opt = AdamW::new(vec![("b".into(), b.shallow_clone()), ("p".into(), p.shallow_clone())], &cfg);
            assert_eq!(opt.implementation(), imp);
            for i in 0..3 {
                opt.zero_grad();
                let loss = (&p * &p).sum(Kind::Float) * (i + 1) as f64 + (&b * &b * &b).sum(Kind::Float);
                loss.backward();
                opt.step(0.01).unwrap();
            }
            let got: Vec<f32> = Vec::try_from(p.flatten(0, -1)).unwrap();
            let want = [0.967_974_7, -1.964_992_8, 2.962_001, 0.469_442_9];
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{imp:?}: {got:?} vs {want:?}");
            }
            let got_b: Vec<f32> = Vec::try_from(&b).unwrap();
            let want_b = [0.470_027_7f32, -0.530_012_4];
            for (g, w) in got_b.iter().zip(want_b) {
                assert!((g - w).abs() < 1e-6, "{imp:?}: {got_b:?} vs {want_b:?}");
            }
        }
    }

    /// Fp32 matrices and vectors and bf16 ones (odd sizes: the kernel's vector tails) trained
    /// `steps` steps with gradients `c_k` whose magnitudes span 1e-7..1, so that eps matters
    /// (sqrt(v) ≈ |g|). Returns (name, tensor) of the fp32 weights (masters for bf16) and moments.
    fn train_mixed(imp: OptimizerImpl, weight_decay: f64, steps: u64) -> Vec<(String, Tensor)> {
        tch::manual_seed(7);
        let shapes: [(&str, &[i64], Kind); 4] =
            [("a.w", &[33, 17], Kind::Float), ("a.b", &[17], Kind::Float), ("h.w", &[9, 20], Kind::BFloat16), ("h.b", &[7], Kind::BFloat16)];
        let params: Vec<(String, Tensor)> =
            shapes.iter().map(|(n, s, k)| (n.to_string(), Tensor::randn(*s, (Kind::Float, Device::Cpu)).to_kind(*k).set_requires_grad(true))).collect();
        let scales: Vec<Tensor> = shapes.iter().map(|(_, s, _)| (Tensor::rand(*s, (Kind::Float, Device::Cpu)) * (-7.0 * std::f64::consts::LN_10)).exp()).collect();
        let cfg = TrainConfig { weight_decay, beta1: 0.9, beta2: 0.95, eps: 1e-8, optimizer_impl: Some(imp), ..TrainConfig::default() };
        let mut opt = AdamW::new(params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect(), &cfg);
        for _ in 0..steps {
            opt.zero_grad();
            let loss = params.iter().zip(&scales).map(|((_, p), s)| (p.to_kind(Kind::Float) * (s * s.randn_like())).sum(Kind::Float));
            loss.fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, l| a + l).backward();
            opt.step(1e-2).unwrap();
        }
        for s in opt.slots.iter().filter(|s| s.master.is_some()) {
            assert!(s.param.equal(&s.weights().to_kind(Kind::BFloat16)), "{}: the bf16 weights are the rounded master", s.name);
        }
        let mut out: Vec<(String, Tensor)> = opt.slots.iter().map(|s| (format!("w.{}", s.name), s.weights())).collect();
        out.extend(opt.state_tensors().into_iter().filter(|(n, _)| !n.starts_with("master.")));
        out
    }

    /// The fused kernel computes the loop's AdamW to 1e-6 relative (per tensor, max norm) on
    /// fp32 and bf16 parameters, with and without decay, over several steps.
    #[test]
    fn fused_adamw_matches_the_loop() {
        assert!(fused::AVAILABLE, "build.rs did not build the native extension: see the build's warnings");
        for wd in [0.1, 0.0] {
            let fused = train_mixed(OptimizerImpl::Fused, wd, 8);
            let looped = train_mixed(OptimizerImpl::Loop, wd, 8);
            assert_eq!(fused.len(), 4 * 3);
            for ((name, f), (_, l)) in fused.iter().zip(&looped) {
                let rel = (f - l).abs().max().double_value(&[]) / l.abs().max().double_value(&[]);
                println!("weight_decay {wd}: {name}: fused vs loop {rel:e} relative");
                assert!(rel <= 1e-6, "weight_decay {wd}: {name} differs by {rel:e} relative");
            }
        }
    }

    /// A run stopped after 3 steps and resumed from its saved state (moments, masters, step
    /// count) continues exactly as the uninterrupted 6-step run: the fused kernel's step
    /// number comes from `AdamW::steps`, which `load_state` sets.
    #[test]
    fn fused_resume_is_exact() {
        let cfg = TrainConfig { weight_decay: 0.1, optimizer_impl: Some(OptimizerImpl::Fused), ..TrainConfig::default() };
        let init = || Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5, 0.25, -1.5]).view([2, 3]).set_requires_grad(true);
        let named = |p: &Tensor| vec![("p".to_string(), p.shallow_clone())];
        let run = |opt: &mut AdamW, p: &Tensor, steps: std::ops::Range<i64>| {
            for i in steps {
                opt.zero_grad();
                ((p * p).sum(Kind::Float) * (i + 1) as f64).backward();
                opt.step(0.01).unwrap();
            }
        };
        let whole = init();
        let mut opt = AdamW::new(named(&whole), &cfg);
        run(&mut opt, &whole, 0..6);
        let first = init();
        let mut opt = AdamW::new(named(&first), &cfg);
        run(&mut opt, &first, 0..3);
        let saved: Vec<(String, Tensor)> = opt.state_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let resumed = first.detach().copy().set_requires_grad(true);
        let mut opt = AdamW::new(named(&resumed), &cfg);
        opt.load_state(saved, 3, std::path::Path::new("ckpt")).unwrap();
        run(&mut opt, &resumed, 3..6);
        assert!(resumed.equal(&whole), "{resumed} vs {whole}");
    }

    /// `zero_grad` is PyTorch's `set_to_none=True`: no gradient afterwards, and a parameter the
    /// next backward does not reach is left alone by AdamW (no weight decay, no moment decay),
    /// however many steps it had a gradient before.
    #[test]
    fn zero_grad_sets_gradients_to_none_and_unreached_parameters_stay_put() {
        assert!(crate::dist::hooks::AVAILABLE, "the native extension (csrc/grad_hooks.cpp) is built");
        let cfg = TrainConfig { weight_decay: 0.1, ..TrainConfig::default() };
        let (a, b) = (Tensor::ones([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true), Tensor::ones([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true));
        let mut opt = AdamW::new(vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], &cfg);
        (&a * &b).sum(Kind::Float).backward();
        opt.step(0.1).unwrap();
        opt.zero_grad();
        assert!(!a.grad().defined() && !b.grad().defined(), "gradients are cleared, not zeroed");
        let b_before = b.detach().copy();
        (&a * 3.0).sum(Kind::Float).backward(); // b unused in this step
        opt.step(0.1).unwrap();
        assert!(b.equal(&b_before), "a parameter without a gradient is not decayed: {b} vs {b_before}");
        assert_eq!(Vec::<f32>::try_from(a.grad().reshape([-1])).unwrap(), [3.0; 4], "a fresh gradient, not added to an old one");
    }
}
