//! safetensors files ↔ tch tensors. We write through the `safetensors` crate (not tch's writer)
//! so every file carries `__metadata__ {"format": "pt"}`, which transformers requires.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, IoContext, Result};

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// The serialised bytes of `tensors` (sorted by name by the format) with `format: pt`.
pub fn serialize(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let dtype = dtype_of(t.kind())
            .ok_or_else(|| Error::Input(format!("tensor {name}: dtype {:?} cannot be saved", t.kind())))?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            let view = TensorView::new(*d, s.clone(), b).expect("shape and byte count agree by construction");
            (n.clone(), view)
        })
        .collect();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Input(format!("safetensors serialisation: {e}")))
}

/// Writes `tensors` to `path` atomically.
pub fn save(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    crate::fsutil::write_atomic(path, &serialize(tensors)?)
}

/// Reads every tensor of `path` (CPU, the file's dtype).
pub fn load(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).at(path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::model(path, format!("not a safetensors file: {e}")))?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype())
            .ok_or_else(|| Error::model(path, format!("tensor {name}: unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
