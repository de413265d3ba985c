//! Building blocks of the pretrained decoder families beside the basic layers in
//! [`super::layers`]: RMSNorm, rotary position embeddings (RoPE, rotate-half layout, with the
//! `linear` and `llama3` frequency scalings), the KV cache and the causal / sliding-window
//! attention masks for `scaled_dot_product_attention`.
//!
//! The formulas follow transformers 5.23 (`modeling_llama.py`, `modeling_rope_utils.py`,
//! `masking_utils.py`) operation for operation, so that fp32 results agree to rounding.
//!
//! References: Zhang & Sennrich 2019 (RMSNorm); Su et al. 2021 (RoFormer, RoPE); Meta's
//! Llama 3.1 release (`llama3` RoPE scaling); Jiang et al. 2023 (Mistral, sliding window).

use tch::nn::{Init, Path};
use tch::{Device, Kind, Tensor};

/// RMSNorm over the last dimension: `w · x / sqrt(mean(x²) + eps)`, computed in fp32 and cast
/// back to the input's dtype before the weight multiplies (as `LlamaRMSNorm` does).
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(p: Path, dim: usize, eps: f64) -> RmsNorm {
        RmsNorm { weight: p.var("weight", &[dim as i64], Init::Const(1.0)), eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let h = x.to_kind(Kind::Float);
        let var = h.square().mean_dim(-1, true, Kind::Float); // (.., 1)
        let h = h * (var + self.eps).rsqrt();
        &self.weight * h.to_kind(kind)
    }
}

/// How RoPE's inverse frequencies are rescaled for contexts longer than pretraining
/// (`rope_scaling` / `rope_parameters.rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `rope_type: "default"`: the original RoPE.
    None,
    /// `rope_type: "linear"`: every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// `rope_type: "llama3"`: long wavelengths divided by `factor`, short ones kept, a smooth
    /// interpolation between `original_max_position_embeddings / low_freq_factor` and
    /// `/ high_freq_factor`.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// Rotary position embedding for heads of size `head_dim`, rotate-half layout (the first and
/// second halves of a head are the two coordinates of each rotated pair).
#[derive(Debug)]
pub struct Rope {
    /// `(head_dim / 2)` fp32 inverse frequencies.
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling, device: Device) -> Rope {
        let dim = head_dim as f64;
        let exps = Tensor::arange_start_step(0, head_dim as i64, 2, (Kind::Int64, device)).to_kind(Kind::Float) / dim;
        let inv_freq = Tensor::pow_scalar(theta, &exps).reciprocal(); // (hd/2)
        let inv_freq = match *scaling {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear { factor } => inv_freq / factor,
            RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: old } => {
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                let wavelen = (&inv_freq).reciprocal() * (2.0 * std::f64::consts::PI);
                let long = wavelen.gt(low_wavelen);
                let scaled = inv_freq.where_self(&long.logical_not(), &(&inv_freq / factor));
                let smooth = ((&wavelen).reciprocal() * old - low) / (high - low);
                let smoothed = (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen.lt(high_wavelen).logical_not().logical_and(&long.logical_not());
                smoothed.where_self(&medium, &scaled)
            }
        };
        Rope { inv_freq }
    }

    /// `cos`, `sin` of shape `(T, head_dim)` for positions `start..start+t`, in `kind`.
    pub fn cos_sin(&self, start: i64, t: i64, kind: Kind) -> (Tensor, Tensor) {
        let pos = Tensor::arange_start(start, start + t, (Kind::Int64, self.inv_freq.device())).to_kind(Kind::Float);
        let freqs = pos.unsqueeze(1) * self.inv_freq.unsqueeze(0); // (T, hd/2)
        let emb = Tensor::cat(&[&freqs, &freqs], -1); // (T, hd)
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }

    /// Rotates `x` of shape `(B, H, T, hd)` by the angles of `cos`/`sin` `(T, hd)`.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
        let rotated = Tensor::cat(&[&x2.neg(), &x1], 3); // rotate_half
        x * cos + rotated * sin
    }
}

/// Keys and values of past positions, one `(k, v)` of shape `(B, n_kv_heads, T_past, hd)` per
/// layer. Start with `KvCache::default()`, pass it to every forward of one generation.
#[derive(Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    /// Number of positions already cached.
    pub len: usize,
}

/// Appends this step's `k`, `v` (B, nkv, T, hd) to a layer's cache slot; returns all of them.
pub(crate) fn cache_append(slot: &mut Option<(Tensor, Tensor)>, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
    let (k, v) = match slot.as_ref() {
        Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2), Tensor::cat(&[pv, &v], 2)),
        None => (k, v),
    };
    *slot = Some((k.shallow_clone(), v.shallow_clone()));
    (k, v)
}

/// How the `t` new queries after `past` cached positions may attend, for
/// `scaled_dot_product_attention`: `(mask, is_causal)`. Query `i` sits at position `past + i`
/// and sees key `j` iff `j <= past + i` and, with a sliding window `w`, `j > past + i - w`
/// (transformers' `sliding_window_overlay`). The plain cases use no mask tensor: `is_causal`
/// for a prefill without window, nothing for one new token within the window.
pub fn attention_mask(t: i64, past: i64, window: Option<usize>, device: Device) -> (Option<Tensor>, bool) {
    let total = past + t;
    let window_cuts = window.is_some_and(|w| total > w as i64);
    if !window_cuts {
        if past == 0 {
            return (None, t > 1);
        }
        if t == 1 {
            return (None, false);
        }
    }
    let q = Tensor::arange_start(past, total, (Kind::Int64, device)).unsqueeze(1); // (T, 1)
    let k = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0); // (1, P+T)
    let mut allowed = k.le_tensor(&q); // (T, P+T)
    if let Some(w) = window {
        allowed = allowed.logical_and(&k.gt_tensor(&(&q - w as i64)));
    }
    (Some(allowed), false)
}

/// [`attention_mask`] over keys some of which are padding: `key_mask` `(B, P+T)` is
/// transformers' `attention_mask` (nonzero = real token) for the cached and the `t` new
/// positions. Query `i` (position `past + i`) sees key `j` iff the causal / window rule allows it
/// and `j` is real; every query also sees itself, so that the rows of padding queries are
/// never empty (NaN in `scaled_dot_product_attention`). Real queries never see a padding key,
/// so their outputs are transformers' exactly; padding outputs are never read (transformers'
/// eager attention spreads those rows over the masked keys instead). `(B, 1, T, P+T)` bool.
pub fn padded_attention_mask(key_mask: &Tensor, t: i64, past: i64, window: Option<usize>) -> Tensor {
    let device = key_mask.device();
    let total = past + t;
    let q = Tensor::arange_start(past, total, (Kind::Int64, device)).unsqueeze(1); // (T, 1)
    let k = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0); // (1, P+T)
    let mut allowed = k.le_tensor(&q); // (T, P+T)
    if let Some(w) = window {
        allowed = allowed.logical_and(&k.gt_tensor(&(&q - w as i64)));
    }
    let real = key_mask.ne(0).unsqueeze(1).unsqueeze(1); // (B, 1, 1, P+T)
    allowed.logical_and(&real).logical_or(&k.eq_tensor(&q)) // (B, 1, T, P+T)
}

/// Whether a padding mask `(B, T)` (nonzero = real) has padding before a real token of its row
/// (left padding): only then must attention be masked, since under the causal mask a real token
/// never sees the padding after it. Reads one number back from the device.
pub fn pads_before_tokens(key_mask: &Tensor) -> bool {
    let t = key_mask.size().last().copied().unwrap_or(0);
    if t < 2 {
        return false;
    }
    let real = key_mask.ne(0);
    let (before, after) = (real.narrow(1, 0, t - 1), real.narrow(1, 1, t - 1));
    after.logical_and(&before.logical_not()).any().int64_value(&[]) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_their_definition() {
        let (m, causal) = attention_mask(4, 0, None, Device::Cpu);
        assert!(m.is_none() && causal);
        let (m, causal) = attention_mask(1, 7, Some(16), Device::Cpu);
        assert!(m.is_none() && !causal);
        let (m, _) = attention_mask(2, 3, Some(3), Device::Cpu);
        let m: Vec<Vec<bool>> = Vec::try_from(m.unwrap().to_kind(Kind::Bool)).unwrap();
        // position 3 sees 1,2,3; position 4 sees 2,3,4
        assert_eq!(m, vec![vec![false, true, true, true, false], vec![false, false, true, true, true]]);
    }

    #[test]
    fn rope_preserves_norms_and_llama3_keeps_high_frequencies() {
        let rope = Rope::new(8, 10000.0, &RopeScaling::None, Device::Cpu);
        let x = Tensor::randn([1, 2, 5, 8], (Kind::Float, Device::Cpu));
        let (cos, sin) = rope.cos_sin(3, 5, Kind::Float);
        let y = Rope::apply(&x, &cos, &sin);
        let diff = (x.norm() - y.norm()).abs().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
        let scaling = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64.0 };
        let l3 = Rope::new(8, 10000.0, &scaling, Device::Cpu);
        // The highest frequency (wavelength 2π < 64/4) is unchanged, the lowest divided by 8.
        assert_eq!(l3.inv_freq.double_value(&[0]), rope.inv_freq.double_value(&[0]));
        let ratio = rope.inv_freq.double_value(&[3]) / l3.inv_freq.double_value(&[3]);
        assert!((ratio - 8.0).abs() < 1e-4, "{ratio}");
    }

    #[test]
    fn padded_masks_hide_padding_keys_and_keep_the_diagonal() {
        let key_mask = Tensor::from_slice(&[0i64, 1, 1, 1, 1, 1, 1, 0]).view([2, 4]);
        let m: Vec<Vec<bool>> = Vec::try_from(padded_attention_mask(&key_mask, 4, 0, Some(2)).get(0).get(0)).unwrap();
        // left padding: the padding query sees itself only; window 2
        assert_eq!(m, vec![vec![true, false, false, false], vec![false, true, false, false], vec![false, true, true, false], vec![false, false, true, true]]);
        assert!(pads_before_tokens(&key_mask));
        assert!(!pads_before_tokens(&Tensor::from_slice(&[1i64, 1, 0, 0, 1, 1, 1, 1]).view([2, 4])));
    }
}
