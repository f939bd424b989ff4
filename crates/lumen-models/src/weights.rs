//! Weights borrowed from a GGUF file: linear layers stay in their quantized block format inside
//! the mmap (never copied), small vectors (norms, biases) are converted to f32 once at load.

use half::{bf16, f16};
use lumen_gguf::{GgmlType, GgufFile, TensorInfo};
use lumen_kernels::{MatRef, WeightFormat};

use crate::ModelError;

/// Maps a GGUF tensor type to a kernel weight format, if Lumen can compute with it.
pub fn weight_format(ty: GgmlType) -> Option<WeightFormat> {
    Some(match ty {
        GgmlType::F32 => WeightFormat::F32,
        GgmlType::F16 => WeightFormat::F16,
        GgmlType::BF16 => WeightFormat::BF16,
        GgmlType::Q4_0 => WeightFormat::Q4_0,
        GgmlType::Q4_1 => WeightFormat::Q4_1,
        GgmlType::Q8_0 => WeightFormat::Q8_0,
        GgmlType::Q4_K => WeightFormat::Q4_K,
        GgmlType::Q5_K => WeightFormat::Q5_K,
        GgmlType::Q6_K => WeightFormat::Q6_K,
        _ => return None,
    })
}

/// A `rows × cols` weight matrix living in the GGUF file.
#[derive(Clone, Debug)]
pub struct Linear {
    info: TensorInfo,
    format: WeightFormat,
    rows: usize,
    cols: usize,
}

fn find<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

fn check_shape(info: &TensorInfo, expected: &[u64]) -> Result<(), ModelError> {
    if info.dims != expected {
        return Err(ModelError::BadShape { name: info.name.clone(), got: info.dims.clone(), expected: expected.to_vec() });
    }
    Ok(())
}

impl Linear {
    /// Looks up `name`, checks it is `rows` outputs of `cols` inputs in a supported format.
    pub fn load(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Self, ModelError> {
        let info = find(file, name)?;
        check_shape(info, &[cols as u64, rows as u64])?;
        let format = weight_format(info.ggml_type).ok_or_else(|| ModelError::UnsupportedType { name: name.to_string(), ty: info.ggml_type.name().to_string() })?;
        // Validate once here so `mat` cannot fail later.
        MatRef::new(format, rows, cols, file.tensor_data(info))?;
        Ok(Linear { info: info.clone(), format, rows, cols })
    }

    /// Like [`Linear::load`] but `None` when the tensor is absent.
    pub fn load_optional(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Option<Self>, ModelError> {
        if file.tensor(name).is_none() {
            return Ok(None);
        }
        Self::load(file, name, rows, cols).map(Some)
    }

    /// The matrix view over the file's bytes.
    pub fn mat<'a>(&self, file: &'a GgufFile) -> MatRef<'a> {
        match MatRef::new(self.format, self.rows, self.cols, file.tensor_data(&self.info)) {
            Ok(m) => m,
            // Checked in `load` against the same file; reaching this is a bug, not bad input.
            Err(e) => panic!("weight {} changed shape after load: {e}", self.info.name),
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The weights' storage format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }
}

/// Reads a 1-D tensor of `len` values (F32, F16 or BF16) into f32.
pub fn load_vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let info = find(file, name)?;
    check_shape(info, &[len as u64])?;
    let data = file.tensor_data(info);
    let out = match info.ggml_type {
        GgmlType::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        GgmlType::F16 => data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        GgmlType::BF16 => data.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(ModelError::UnsupportedType { name: name.to_string(), ty: other.name().to_string() }),
    };
    Ok(out)
}

/// Like [`load_vector`] but `None` when the tensor is absent.
pub fn load_vector_optional(file: &GgufFile, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
    if file.tensor(name).is_none() {
        return Ok(None);
    }
    load_vector(file, name, len).map(Some)
}
