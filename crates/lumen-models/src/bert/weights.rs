//! `model.safetensors`: mapping the file, finding BERT's tensors and checking them.
//!
//! The file is mapped read-only and never copied whole. Matrices (the linear layers and the
//! word-embedding table) stay in the map and are read in their stored format, F32, F16 or
//! BF16: the GEMM takes bytes, so the map's lack of alignment does not matter. Small vectors
//! (biases, LayerNorm parameters) and the position table are decoded into `Vec<f32>` once.
//!
//! Hugging Face saves `BertModel` tensors as `embeddings.…` / `encoder.layer.N.…`, while
//! checkpoints saved from a task model (`BertForMaskedLM`, …) prefix them with `bert.` (MPNet's
//! with `mpnet.`); the prefix is detected from the word-embedding table. Old checkpoints call LayerNorm's
//! parameters `gamma`/`beta`; both spellings are accepted.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use lumen_gguf::FileBytes;
use lumen_kernels::{MatRef, WeightFormat};
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;

/// Floating-point storage types Lumen reads from safetensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FloatType {
    F32,
    F16,
    BF16,
}

impl FloatType {
    fn from_dtype(dtype: Dtype) -> Option<FloatType> {
        match dtype {
            Dtype::F32 => Some(FloatType::F32),
            Dtype::F16 => Some(FloatType::F16),
            Dtype::BF16 => Some(FloatType::BF16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
        }
    }

    /// The kernels' name for this format.
    fn format(self) -> WeightFormat {
        match self {
            FloatType::F32 => WeightFormat::F32,
            FloatType::F16 => WeightFormat::F16,
            FloatType::BF16 => WeightFormat::BF16,
        }
    }

    /// Decodes little-endian elements from `bytes` into `out` (`bytes.len() == out.len() * size`).
    pub(crate) fn decode(self, bytes: &[u8], out: &mut [f32]) {
        debug_assert_eq!(bytes.len(), out.len() * self.size());
        match self {
            FloatType::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            FloatType::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            FloatType::BF16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }
}

/// A tensor found in the file: its type, shape and absolute byte range.
#[derive(Clone, Debug)]
struct Slot {
    ty: FloatType,
    shape: Vec<usize>,
    range: Range<usize>,
}

/// A row-major matrix left in the file, `rows × cols`.
#[derive(Clone, Debug)]
pub(crate) struct MatSlot {
    pub(crate) ty: FloatType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    range: Range<usize>,
}

/// A parsed safetensors file whose tensors are borrowed on demand.
pub(crate) struct WeightFile {
    storage: FileBytes,
    slots: HashMap<String, Result<Slot, String>>,
    prefix: &'static str,
}

impl WeightFile {
    /// Maps the file at `path` and reads its header.
    pub(crate) fn open(path: &Path) -> Result<WeightFile, ModelError> {
        let io = |source| ModelError::Io {
            path: path.display().to_string(),
            source,
        };
        WeightFile::with_storage(FileBytes::map(path).map_err(io)?)
    }

    /// Parses a safetensors file held in memory.
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<WeightFile, ModelError> {
        WeightFile::with_storage(FileBytes::Owned(bytes))
    }

    fn with_storage(storage: FileBytes) -> Result<WeightFile, ModelError> {
        let bytes = &storage[..];
        // `read_metadata` checks that the tensors tile the data section exactly, that each
        // byte length matches its shape and dtype, and that the data section ends the file.
        let (header_len, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::Safetensors(e.to_string()))?;
        let data_start = header_len + 8;
        let slots = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let slot = match FloatType::from_dtype(info.dtype) {
                    Some(ty) => Ok(Slot {
                        ty,
                        shape: info.shape.clone(),
                        range: data_start + info.data_offsets.0..data_start + info.data_offsets.1,
                    }),
                    None => Err(format!("{:?}", info.dtype)),
                };
                (name, slot)
            })
            .collect::<HashMap<_, _>>();
        let prefix = if slots.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else if slots.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else if slots.contains_key("mpnet.embeddings.word_embeddings.weight") {
            "mpnet."
        } else {
            return Err(ModelError::MissingTensor(
                "embeddings.word_embeddings.weight".into(),
            ));
        };
        Ok(WeightFile {
            storage,
            slots,
            prefix,
        })
    }

    /// The whole file.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.storage[..]
    }

    /// Looks up `name` (any of `names`, the first spelling found) and checks its shape.
    fn slot(&self, names: &[&str], shape: &[usize]) -> Result<Slot, ModelError> {
        let Some((name, found)) = names.iter().find_map(|n| {
            let full = format!("{}{n}", self.prefix);
            self.slots.get(&full).map(|s| (full, s))
        }) else {
            return Err(ModelError::MissingTensor(format!(
                "{}{}",
                self.prefix, names[0]
            )));
        };
        let slot = found.clone().map_err(|ty| ModelError::UnsupportedType {
            name: name.clone(),
            ty,
            supported: "F32, F16, BF16".to_string(),
        })?;
        if slot.shape != shape {
            return Err(ModelError::BadShape {
                name,
                got: slot.shape.iter().map(|&d| d as u64).collect(),
                expected: shape.iter().map(|&d| d as u64).collect(),
            });
        }
        Ok(slot)
    }

    /// A `rows × cols` matrix called `name`, left in the file.
    pub(crate) fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<MatSlot, ModelError> {
        let s = self.slot(&[name], &[rows, cols])?;
        Ok(MatSlot {
            ty: s.ty,
            rows,
            cols,
            range: s.range,
        })
    }

    /// The `len`-element vector called `name`, decoded to f32.
    pub(crate) fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        self.vector_any(&[name], len)
    }

    /// Like [`vector`](Self::vector), accepting any of several spellings of the name.
    pub(crate) fn vector_any(&self, names: &[&str], len: usize) -> Result<Vec<f32>, ModelError> {
        let s = self.slot(names, &[len])?;
        let mut out = vec![0.0; len];
        s.ty.decode(&self.bytes()[s.range], &mut out);
        Ok(out)
    }

    /// The whole `rows × cols` matrix called `name`, decoded to f32 (for small tables).
    pub(crate) fn table(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let m = self.matrix(name, rows, cols)?;
        let mut out = vec![0.0; rows * cols];
        m.ty.decode(self.mat_bytes(&m), &mut out);
        Ok(out)
    }

    /// The bytes of matrix `m` (which must come from this file).
    pub(crate) fn mat_bytes(&self, m: &MatSlot) -> &[u8] {
        self.bytes().get(m.range.clone()).unwrap_or(&[])
    }

    /// Decodes row `row` of matrix `m` into `out` (`out.len() == m.cols`, `row < m.rows`).
    pub(crate) fn decode_row(&self, m: &MatSlot, row: usize, out: &mut [f32]) {
        let width = m.cols * m.ty.size();
        let bytes = self.mat_bytes(m);
        m.ty.decode(&bytes[row * width..(row + 1) * width], out);
    }

    /// Matrix `m` as the kernels' GEMM operand.
    pub(crate) fn mat_ref(&self, m: &MatSlot) -> Result<MatRef<'_>, ModelError> {
        Ok(MatRef::new(
            m.ty.format(),
            m.rows,
            m.cols,
            self.mat_bytes(m),
        )?)
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Writing small safetensors files for tests.

    /// Serializes `(name, dtype, shape, raw bytes)` tensors into safetensors bytes.
    pub(crate) fn safetensors_bytes(tensors: &[(String, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut offset = 0;
        for (name, dtype, shape, data) in tensors {
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}),
            );
            offset += data.len();
        }
        let header = serde_json::Value::Object(header).to_string();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        for (_, _, _, data) in tensors {
            out.extend_from_slice(data);
        }
        out
    }

    /// Little-endian bytes of f32 values.
    pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn file(tensors: &[(String, &str, Vec<usize>, Vec<u8>)]) -> Result<WeightFile, ModelError> {
        WeightFile::from_bytes(safetensors_bytes(tensors))
    }

    fn word(prefix: &str) -> (String, &'static str, Vec<usize>, Vec<u8>) {
        (
            format!("{prefix}embeddings.word_embeddings.weight"),
            "F32",
            vec![3, 2],
            f32_bytes(&[1., 2., 3., 4., 5., 6.]),
        )
    }

    #[test]
    fn finds_tensors_with_and_without_prefix() {
        for prefix in ["", "bert.", "mpnet."] {
            let f = file(&[word(prefix)]).unwrap();
            let m = f.matrix("embeddings.word_embeddings.weight", 3, 2).unwrap();
            let mut row = [0.0; 2];
            f.decode_row(&m, 2, &mut row);
            assert_eq!(row, [5.0, 6.0]);
        }
    }

    #[test]
    fn decodes_half_types_and_alternate_names() {
        let h: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let b: Vec<u8> = [0.25f32, 8.0]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        let f = file(&[
            word(""),
            ("a.gamma".into(), "F16", vec![2], h),
            ("b.weight".into(), "BF16", vec![2], b),
        ])
        .unwrap();
        assert_eq!(
            f.vector_any(&["a.weight", "a.gamma"], 2).unwrap(),
            vec![1.5, -2.0]
        );
        assert_eq!(f.vector("b.weight", 2).unwrap(), vec![0.25, 8.0]);
    }

    #[test]
    fn reports_missing_bad_shape_and_bad_type() {
        let f = file(&[word(""), ("i".into(), "I64", vec![1], vec![0; 8])]).unwrap();
        assert!(matches!(
            f.vector("nope", 2),
            Err(ModelError::MissingTensor(_))
        ));
        assert!(matches!(
            f.matrix("embeddings.word_embeddings.weight", 2, 3),
            Err(ModelError::BadShape { .. })
        ));
        assert!(matches!(
            f.vector("i", 1),
            Err(ModelError::UnsupportedType { .. })
        ));
        assert!(matches!(file(&[]), Err(ModelError::MissingTensor(_))));
    }

    #[test]
    fn rejects_malformed_files() {
        assert!(matches!(
            WeightFile::from_bytes(vec![]),
            Err(ModelError::Safetensors(_))
        ));
        assert!(matches!(
            WeightFile::from_bytes(vec![0xff; 16]),
            Err(ModelError::Safetensors(_))
        ));
        let mut truncated = safetensors_bytes(&[word("")]);
        truncated.pop();
        assert!(matches!(
            WeightFile::from_bytes(truncated),
            Err(ModelError::Safetensors(_))
        ));
    }
}
