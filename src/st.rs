//! safetensors files ↔ tch tensors. We write through the `safetensors` crate (not tch's writer)
//! so every file carries `__metadata__ {"format": "pt"}`, which transformers requires. Saving
//! streams tensor by tensor from the device and loading reads a memory map, so neither holds a
//! second host copy of a whole model or shard.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, View};
use safetensors::{SafeTensorError, SafeTensors};
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

/// A tensor as the safetensors writer sees it: its bytes are copied to the host only when the
/// writer reaches it, so a save holds one tensor's host copy at a time, not the whole model.
/// A failed device→host copy (the writer's `data()` cannot return an error) is recorded in
/// `failed` and turned into an error after the write, which then discards the file.
struct Lazy<'a> {
    name: &'a str,
    tensor: &'a Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
    failed: std::cell::RefCell<Option<String>>,
}

impl<'a> Lazy<'a> {
    fn new(name: &'a str, tensor: &'a Tensor) -> Result<Lazy<'a>> {
        let dtype = dtype_of(tensor.kind()).ok_or_else(|| Error::Input(format!("tensor {name}: dtype {:?} cannot be saved", tensor.kind())))?;
        Ok(Lazy { name, tensor, dtype, shape: tensor.size().iter().map(|&d| d as usize).collect(), failed: Default::default() })
    }

    fn host_bytes(&self) -> std::result::Result<Vec<u8>, tch::TchError> {
        let t = self.tensor.f_to_device(Device::Cpu)?.f_contiguous()?;
        let mut bytes = vec![0u8; self.data_len()];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        Ok(bytes)
    }
}

impl View for Lazy<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self.host_bytes() {
            Ok(bytes) => Cow::Owned(bytes),
            Err(e) => {
                *self.failed.borrow_mut() = Some(format!("tensor {}: copy to the host failed: {e}", self.name));
                Cow::Owned(vec![0u8; self.data_len()])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// The writer takes views by value; lending them keeps `failed` readable after the write.
impl View for &Lazy<'_> {
    fn dtype(&self) -> Dtype {
        (**self).dtype()
    }
    fn shape(&self) -> &[usize] {
        (**self).shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        (**self).data()
    }
    fn data_len(&self) -> usize {
        (**self).data_len()
    }
}

fn views(tensors: &[(String, Tensor)]) -> Result<Vec<(&str, Lazy<'_>)>> {
    tensors.iter().map(|(n, t)| Ok((n.as_str(), Lazy::new(n, t)?))).collect()
}

fn metadata() -> Option<HashMap<String, String>> {
    Some([("format".to_string(), "pt".to_string())].into())
}

/// The first failed device→host copy among `views`, as an error.
fn copy_failure(views: &[(&str, Lazy<'_>)]) -> Result<()> {
    match views.iter().find_map(|(_, v)| v.failed.borrow_mut().take()) {
        Some(msg) => Err(Error::Torch(tch::TchError::Torch(msg))),
        None => Ok(()),
    }
}

/// The serialised bytes of `tensors` (sorted by name by the format) with `format: pt`.
pub fn serialize(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let views = views(tensors)?;
    let bytes = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), metadata()).map_err(|e| Error::Input(format!("safetensors serialisation: {e}")))?;
    copy_failure(&views)?;
    Ok(bytes)
}

/// Writes `tensors` to `path` atomically, streaming: tensor by tensor from the device into the
/// file (the host never holds more than one tensor's bytes), then fsync and rename.
pub fn save(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let views = views(tensors)?;
    let tmp = crate::fsutil::temp_path(path);
    let result = (|| {
        safetensors::serialize_to_file(views.iter().map(|(n, v)| (*n, v)), metadata(), &tmp).map_err(|e| match e {
            SafeTensorError::IoError(io) => Error::Io { path: tmp.clone(), source: io },
            e => Error::Input(format!("{}: safetensors serialisation: {e}", path.display())),
        })?;
        copy_failure(&views)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
        std::fs::rename(&tmp, path).at(path)?;
        crate::fsutil::sync_parent(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Calls `f` with every tensor of `path` (CPU, the file's dtype), in file order, one at a
/// time: the file is memory-mapped, so loading a shard holds one tensor's copy, not two
/// copies of the shard.
pub fn visit(path: &Path, mut f: impl FnMut(String, Tensor) -> Result<()>) -> Result<()> {
    let file = std::fs::File::open(path).at(path)?;
    // SAFETY: the mapping is only read while `file` is open; model files are not rewritten
    // while a run reads them (rankforge replaces files by rename, leaving mapped ones intact).
    let map = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
    let st = SafeTensors::deserialize(&map).map_err(|e| Error::model(path, format!("not a safetensors file: {e}")))?;
    for (name, view) in st.iter() {
        let kind = kind_of(view.dtype()).ok_or_else(|| Error::model(path, format!("tensor {name}: unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        f(name.to_string(), Tensor::f_from_data_size(view.data(), &shape, kind)?)?;
    }
    Ok(())
}

/// Reads every tensor of `path` (CPU, the file's dtype), sorted by name.
pub fn load(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    visit(path, |name, t| {
        out.push((name, t));
        Ok(())
    })?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed file is byte for byte what the in-memory serialiser writes, for tensors
    /// of several dtypes and a non-contiguous one, and reads back exactly.
    #[test]
    fn streamed_save_equals_serialize_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]);
        let tensors = vec![
            ("b.weight".to_string(), a.tr()),
            ("a.bias".to_string(), Tensor::from_slice(&[1.5f32, -2.0]).to_kind(Kind::BFloat16)),
            ("ids".to_string(), Tensor::from_slice(&[7i64, 8, 9])),
        ];
        let path = dir.path().join("m.safetensors");
        save(&path, &tensors).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), serialize(&tensors).unwrap());
        let back = load(&path).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.bias", "b.weight", "ids"]);
        assert!(back[1].1.equal(&a.tr().contiguous()) && back[0].1.kind() == Kind::BFloat16);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
        let bad = vec![("c".to_string(), Tensor::from_slice(&[1i16]))];
        assert!(save(&dir.path().join("c.safetensors"), &bad).unwrap_err().to_string().contains("tensor c: dtype"));
    }
}
