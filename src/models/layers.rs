//! Layers shared by the model families: linear, LayerNorm, embedding. Parameters are created
//! through `nn::Path` so that the VarStore name of each weight is its Hugging Face name.
//! A [`Linear`] may carry a LoRA adapter ([`crate::lora`]), which lives outside the VarStore.

use tch::nn::{Init, Path};
use tch::Tensor;

/// `y = x·Wᵀ + b` with `W: [out, in]` (torch.nn.Linear layout), plus `B(A(dropout(x)))·scaling`
/// when a LoRA adapter is attached and enabled.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// The LoRA adapter, if one is attached ([`crate::lora::inject`], [`crate::lora::load_adapter`]).
    pub lora: Option<crate::lora::LoraLayer>,
}

impl Linear {
    /// Weights ~ N(0, std), bias zero.
    pub fn new(p: Path, d_in: usize, d_out: usize, bias: bool, std: f64) -> Linear {
        let weight = p.var("weight", &[d_out as i64, d_in as i64], Init::Randn { mean: 0.0, stdev: std });
        let bias = bias.then(|| p.var("bias", &[d_out as i64], Init::Const(0.0)));
        Linear { weight, bias, lora: None }
    }

    /// Forward; `train` switches the adapter's dropout on. There is deliberately no
    /// train-less `forward`: every model passes its own `train` flag, so `lora.dropout` can
    /// never be dropped silently on some path.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.lora {
            Some(lora) if lora.enabled => lora.add_to(y, x, train),
            _ => y,
        }
    }
}

/// LayerNorm over the last dimension, with an optional bias.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    pub fn new(p: Path, dim: usize, bias: bool, eps: f64) -> LayerNorm {
        let weight = p.var("weight", &[dim as i64], Init::Const(1.0));
        let bias = bias.then(|| p.var("bias", &[dim as i64], Init::Const(0.0)));
        LayerNorm { weight, bias, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x.size().last().expect("LayerNorm input has at least one dimension");
        x.layer_norm([dim], Some(&self.weight), self.bias.as_ref(), self.eps, true)
    }
}

/// An embedding table `[n, dim]` ~ N(0, std).
pub fn embedding(p: Path, n: usize, dim: usize, std: f64) -> Tensor {
    p.var("weight", &[n as i64, dim as i64], Init::Randn { mean: 0.0, stdev: std })
}
