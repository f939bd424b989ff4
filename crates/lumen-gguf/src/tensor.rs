//! Tensor descriptors: reading them from the table and validating them against the file.

use crate::error::GgufError;
use crate::reader::Reader;
use crate::types::GgmlType;

/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Fewest bytes one tensor descriptor can occupy: name length, `n_dims`, type, offset.
pub(crate) const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;

/// One tensor's descriptor, validated against the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in ggml order: `dims[0]` varies fastest (the row length).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Product of `dims`.
    pub n_elements: u64,
    /// Bytes of data: `n_elements / block_size * type_size`.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Elements per row (`dims[0]`, or 1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (`n_elements / row_len`).
    pub fn n_rows(&self) -> u64 {
        self.n_elements.checked_div(self.row_len()).unwrap_or(0)
    }
}

/// A descriptor as read, before its data range is known to be valid.
pub(crate) struct RawTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    rel_offset: u64,
}

impl RawTensor {
    /// The tensor's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// Reads one descriptor: name, dims (at most [`MAX_DIMS`], none zero), type, offset.
pub(crate) fn read_tensor_info(r: &mut Reader<'_>) -> Result<RawTensor, GgufError> {
    let name = r.string("tensor name")?;
    let n_dims = r.u32("tensor dimension count")?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            tensor: name,
            n_dims,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let d = r.u64("tensor dimension")?;
        if d == 0 {
            return Err(GgufError::ZeroDim);
        }
        dims.push(d);
    }
    let id = r.u32("tensor type")?;
    let ggml_type = GgmlType::from_id(id).map_err(|_| GgufError::UnknownTensorType {
        tensor: name.clone(),
        id,
    })?;
    let rel_offset = r.u64("tensor offset")?;
    Ok(RawTensor {
        name,
        dims,
        ggml_type,
        rel_offset,
    })
}

/// Checks a descriptor's sizes, alignment and data range and resolves its absolute offset.
pub(crate) fn validate(
    raw: RawTensor,
    data_start: u64,
    alignment: u64,
    file_len: u64,
) -> Result<TensorInfo, GgufError> {
    let RawTensor {
        name,
        dims,
        ggml_type,
        rel_offset,
    } = raw;
    let Some(n_elements) = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) else {
        return Err(GgufError::ElementOverflow { tensor: name });
    };
    let row_len = dims.first().copied().unwrap_or(1);
    let block_size = ggml_type.block_size();
    if row_len.checked_rem(block_size) != Some(0) {
        return Err(GgufError::RowNotBlockAligned {
            tensor: name,
            row_len,
            ggml_type,
            block_size,
        });
    }
    // `row_len` is a whole number of blocks, so `n_elements` is too.
    let Some(n_bytes) = ggml_type.bytes_for(n_elements) else {
        return Err(GgufError::ElementOverflow { tensor: name });
    };
    if rel_offset.checked_rem(alignment) != Some(0) {
        return Err(GgufError::TensorMisaligned {
            tensor: name,
            offset: rel_offset,
        });
    }
    let offset = data_start.checked_add(rel_offset);
    let in_bounds = offset
        .and_then(|o| o.checked_add(n_bytes))
        .is_some_and(|end| end <= file_len);
    let Some(offset) = offset.filter(|_| in_bounds) else {
        return Err(GgufError::TensorOutOfBounds {
            tensor: name,
            offset: data_start.saturating_add(rel_offset),
            n_bytes,
            file_len,
        });
    };
    Ok(TensorInfo {
        name,
        dims,
        ggml_type,
        offset,
        n_elements,
        n_bytes,
    })
}
