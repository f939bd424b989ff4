//! Weights borrowed from a GGUF file: linear layers stay in their quantized block format inside
//! the file's resident copy (never a second copy), small vectors (norms, biases) are converted
//! to f32 once at load.
//!
//! Two layouts ([`WeightLayout`]), each with the attention arithmetic that goes with it. With
//! [`WeightLayout::Packed`], the default, Q4_0, Q4_1 and Q8_0 matrices whose row count is a
//! multiple of eight, and Q4_K, Q5_K and Q6_K ones whose row count is a multiple of sixteen,
//! are rewritten in place at load into the kernels' row-interleaved layout
//! ([`lumen_kernels::pack`]): same bytes per row, about 2.4x the multiply throughput for
//! batches (the K-quants keep their exact sums, about 2x), and outputs that differ from
//! llama.cpp's by float rounding; attention uses its
//! fast arithmetic (f32 sums in the cheapest order). With [`WeightLayout::Exact`] matrices
//! stay as stored, and their matmuls (and attention) reproduce llama.cpp's summation order bit
//! for bit: what the reference tests use. On a model whose activations have large outliers
//! (SmolLM2) the packed layout's rounding can flip an 8-bit activation quant, so logits move
//! by up to a few tenths and greedy text can diverge from llama.cpp's after some tokens; its
//! perplexity stays within 0.5 % of the exact layout's (`lumen perplexity`), and against the
//! newest llama.cpp both layouts are equally far, so bit-exactness is a testing property and
//! the faster layout is the default.

use std::path::Path;

use half::{bf16, f16};
use lumen_gguf::{GgmlType, GgufFile, Residency, TensorInfo};
use lumen_kernels::attention::AttnArith;
use lumen_kernels::{pack_group, pack_rows, packs, MatRef, WeightFormat};

use crate::packed_cache::packed_cache;
use crate::ModelError;

/// How the 32-value block formats' matrices are laid out in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightLayout {
    /// As in the file: outputs equal llama.cpp's bit for bit.
    Exact,
    /// Row-interleaved for the kernels, with the fast attention arithmetic (the default):
    /// fastest, equal to llama.cpp within float rounding.
    #[default]
    Packed,
}

impl WeightLayout {
    /// The attention arithmetic that goes with the layout: llama.cpp's with its weights,
    /// the fast one with the packed layout, whose results are already equal to llama.cpp's
    /// only within float rounding (the fast attention is about twice as fast when 32
    /// sequences' caches stream from memory; see `lumen_kernels::attention`).
    pub fn attention(self) -> AttnArith {
        match self {
            WeightLayout::Exact => AttnArith::LlamaCpp,
            WeightLayout::Packed => AttnArith::Fast,
        }
    }

    /// The name `FromStr` takes.
    pub fn name(self) -> &'static str {
        match self {
            WeightLayout::Exact => "exact",
            WeightLayout::Packed => "packed",
        }
    }
}

impl std::fmt::Display for WeightLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WeightLayout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            // `ggml` is the exact layout's earlier name.
            "exact" | "ggml" => Ok(WeightLayout::Exact),
            "packed" => Ok(WeightLayout::Packed),
            other => Err(format!(
                "unknown weight layout {other:?}: expected `exact` or `packed`"
            )),
        }
    }
}

/// Checks the environment variables [`load_gguf`] reads (`LUMEN_WEIGHTS_MEMORY`,
/// `LUMEN_PACKED_CACHE`, `LUMEN_PACKED_CACHE_MAX`), so that a server refuses a bad value when
/// it starts rather than at its first model load.
pub fn check_load_env() -> Result<(), String> {
    Residency::from_env()?;
    crate::packed_cache::PackedCachePolicy::from_env()?;
    crate::packed_cache::limit_from_env()?;
    Ok(())
}

/// Loads the GGUF file at `path` for computing, with its linear weights in `layout`: read
/// into the process's own memory, or mapped from the page cache where `LUMEN_WEIGHTS_MEMORY`
/// says `mapped` (see [`Residency`]). In the packed layout a big file is rewritten once and
/// its packed copy kept for the next load ([`crate::packed_cache`]); the file's
/// [`GgufFile::cache_outcome`] says what happened.
pub fn load_gguf(path: &Path, layout: WeightLayout) -> Result<GgufFile, ModelError> {
    let residency = Residency::from_env().map_err(ModelError::BadConfig)?;
    let packed = layout == WeightLayout::Packed;
    let cache = match std::fs::metadata(path) {
        Ok(meta) if packed => packed_cache(meta.len()).map_err(ModelError::BadConfig)?,
        _ => None,
    };
    GgufFile::load_rewriting_cached(
        path,
        residency,
        cache.as_ref(),
        |t| packed && weight_format(t.ggml_type).is_some_and(packs),
        |t, data| {
            if packed {
                pack_in_place(t, data)
            } else {
                Ok(false)
            }
        },
    )
}

/// Rewrites a 2-D Q4_0/Q4_1/Q8_0/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K tensor with a whole number of row
/// groups into the packed layout, one group at a time (a group occupies the same bytes in both
/// layouts). Anything else, including a tensor whose size does not match its shape (reported by
/// the loader that uses it), is left alone.
fn pack_in_place(t: &TensorInfo, data: &mut [u8]) -> Result<bool, ModelError> {
    let Some(format) = weight_format(t.ggml_type).filter(|&f| packs(f)) else {
        return Ok(false);
    };
    let [cols, rows] = t.dims[..] else {
        return Ok(false);
    };
    let (Ok(cols), Ok(rows)) = (usize::try_from(cols), usize::try_from(rows)) else {
        return Ok(false);
    };
    let Some(rb) = format.row_bytes(cols) else {
        return Ok(false);
    };
    let n = pack_rows(format);
    let group = n * rb;
    if !rows.is_multiple_of(n) || rows.checked_mul(rb) != Some(data.len()) || group == 0 {
        return Ok(false);
    }
    let mut rows_buf = vec![0u8; group];
    for chunk in data.chunks_exact_mut(group) {
        rows_buf.copy_from_slice(chunk);
        pack_group(format, cols, &rows_buf, chunk)?;
    }
    Ok(true)
}

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
        GgmlType::Q5_0 => WeightFormat::Q5_0,
        GgmlType::Q5_1 => WeightFormat::Q5_1,
        GgmlType::Q2_K => WeightFormat::Q2_K,
        GgmlType::Q3_K => WeightFormat::Q3_K,
        GgmlType::IQ4_NL => WeightFormat::IQ4_NL,
        GgmlType::IQ4_XS => WeightFormat::IQ4_XS,
        _ => return None,
    })
}

/// The GGUF types [`weight_format`] maps, comma-separated, for error messages.
pub fn supported_weight_types() -> String {
    GgmlType::ALL
        .iter()
        .filter(|t| weight_format(**t).is_some())
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `rows × cols` weight matrix living in the GGUF file.
#[derive(Clone, Debug)]
pub struct Linear {
    info: TensorInfo,
    format: WeightFormat,
    rows: usize,
    cols: usize,
    /// Whether the loader rewrote the tensor into the packed layout.
    packed: bool,
}

fn find<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

fn check_shape(info: &TensorInfo, expected: &[u64]) -> Result<(), ModelError> {
    if info.dims != expected {
        return Err(ModelError::BadShape {
            name: info.name.clone(),
            got: info.dims.clone(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

impl Linear {
    /// Looks up `name`, checks it is `rows` outputs of `cols` inputs in a supported format.
    pub fn load(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Self, ModelError> {
        let info = find(file, name)?;
        check_shape(info, &[cols as u64, rows as u64])?;
        let format = weight_format(info.ggml_type).ok_or_else(|| ModelError::UnsupportedType {
            name: name.to_string(),
            ty: info.ggml_type.name().to_string(),
            supported: supported_weight_types(),
        })?;
        let packed = file.is_rewritten(info);
        let linear = Linear {
            info: info.clone(),
            format,
            rows,
            cols,
            packed,
        };
        // Validate once here so `mat` cannot fail later.
        linear.try_mat(file)?;
        Ok(linear)
    }

    /// Like [`Linear::load`] but `None` when the tensor is absent.
    pub fn load_optional(
        file: &GgufFile,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Self>, ModelError> {
        if file.tensor(name).is_none() {
            return Ok(None);
        }
        Self::load(file, name, rows, cols).map(Some)
    }

    /// The matrix view over the file's bytes.
    pub fn mat<'a>(&self, file: &'a GgufFile) -> MatRef<'a> {
        match self.try_mat(file) {
            Ok(m) => m,
            // Checked in `load` against the same file; reaching this is a bug, not bad input.
            Err(e) => panic!("weight {} changed shape after load: {e}", self.info.name),
        }
    }

    fn try_mat<'a>(&self, file: &'a GgufFile) -> Result<MatRef<'a>, lumen_kernels::KernelError> {
        let data = file.tensor_data(&self.info);
        if self.packed {
            MatRef::packed(self.format, self.rows, self.cols, data)
        } else {
            MatRef::new(self.format, self.rows, self.cols, data)
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
        GgmlType::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlType::BF16 => data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(ModelError::UnsupportedType {
                name: name.to_string(),
                ty: other.name().to_string(),
                supported: "F32, F16, BF16".to_string(),
            })
        }
    };
    Ok(out)
}

/// Like [`load_vector`] but `None` when the tensor is absent.
pub fn load_vector_optional(
    file: &GgufFile,
    name: &str,
    len: usize,
) -> Result<Option<Vec<f32>>, ModelError> {
    if file.tensor(name).is_none() {
        return Ok(None);
    }
    load_vector(file, name, len).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file with no metadata and the given (name, dims, ggml type id, data bytes)
    /// tensors, each at a 32-byte aligned offset (ggml's default alignment).
    fn gguf(tensors: &[(&str, &[u64], u32, usize)]) -> GgufFile {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let mut off = 0u64;
        for (name, dims, ty, len) in tensors {
            b.extend_from_slice(&(name.len() as u64).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in *dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
            off = (off + *len as u64).next_multiple_of(32);
        }
        b.resize(b.len().next_multiple_of(32), 0);
        b.resize(b.len() + off as usize, 0);
        GgufFile::from_bytes(b).expect("a well-formed test GGUF")
    }

    /// A type without kernels is refused by name, and the message lists what would load.
    #[test]
    fn unsupported_type_names_itself_and_the_supported_ones() {
        let file = gguf(&[
            ("iq2", &[256, 1], GgmlType::IQ2_XXS.id(), 66),
            ("q5", &[32, 2], GgmlType::Q5_0.id(), 44),
        ]);
        let err = Linear::load(&file, "iq2", 1, 256).expect_err("IQ2_XXS has no kernels");
        let msg = err.to_string();
        assert!(matches!(err, ModelError::UnsupportedType { .. }), "{msg}");
        assert!(msg.contains("`iq2`") && msg.contains("IQ2_XXS"), "{msg}");
        for ty in [
            "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
            "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
        ] {
            assert!(msg.contains(ty), "{ty} missing from: {msg}");
        }
        // The formats added for llama.cpp's fallbacks load.
        let q5 = Linear::load(&file, "q5", 2, 32).expect("Q5_0 loads");
        assert_eq!(q5.format, WeightFormat::Q5_0);
    }
}
