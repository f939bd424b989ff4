//! The crate's single error type.

use crate::types::GgmlType;

/// Everything that can go wrong while opening, parsing or querying a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened, sized or mapped.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file (bad magic)")]
    BadMagic,

    /// The header names a version other than 2 or 3.
    #[error("unsupported GGUF version {0} (only little-endian versions 2 and 3 are read)")]
    UnsupportedVersion(u32),

    /// The file ended before a field could be read.
    #[error("file truncated while reading {what} at offset {offset}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Byte offset where the read started.
        offset: u64,
    },

    /// A count or length asks for more bytes than the file has left.
    #[error("{what} of {count} cannot fit in the {remaining} bytes left in the file")]
    CountTooLarge {
        /// The count or length field.
        what: &'static str,
        /// The value read from the file.
        count: u64,
        /// Bytes left after the count field.
        remaining: u64,
    },

    /// A tensor has more than four dimensions.
    #[error("tensor '{tensor}' has {n_dims} dimensions (at most 4 are allowed)")]
    TooManyDims {
        /// Tensor name.
        tensor: String,
        /// Dimension count read from the file.
        n_dims: u32,
    },

    /// A tensor has a dimension of size zero.
    #[error("a tensor has a dimension of size 0")]
    ZeroDim,

    /// A tensor's element or byte count overflows 64 bits.
    #[error("tensor '{tensor}' has an element or byte count that overflows 64 bits")]
    ElementOverflow {
        /// Tensor name.
        tensor: String,
    },

    /// A tensor's row length is not a whole number of quantization blocks.
    #[error("tensor '{tensor}': row length {row_len} is not a multiple of the {ggml_type} block size {block_size}")]
    RowNotBlockAligned {
        /// Tensor name.
        tensor: String,
        /// `dims[0]`.
        row_len: u64,
        /// The tensor's element type.
        ggml_type: GgmlType,
        /// Elements per block of that type.
        block_size: u64,
    },

    /// A tensor's data range runs past the end of the file.
    #[error("tensor '{tensor}' data [{offset}, {offset}+{n_bytes}) lies outside the {file_len}-byte file")]
    TensorOutOfBounds {
        /// Tensor name.
        tensor: String,
        /// Absolute offset (saturated on overflow).
        offset: u64,
        /// Bytes the tensor needs.
        n_bytes: u64,
        /// File length in bytes.
        file_len: u64,
    },

    /// A tensor's data does not start on the file's alignment.
    #[error("tensor '{tensor}' data offset {offset} is not aligned to the file alignment")]
    TensorMisaligned {
        /// Tensor name.
        tensor: String,
        /// Relative offset read from the file.
        offset: u64,
    },

    /// `general.alignment` is zero, not a power of two, or too large to use.
    #[error("general.alignment {0} is not a usable non-zero power of two")]
    BadAlignment(u64),

    /// Two metadata entries share a key.
    #[error("duplicate metadata key '{0}'")]
    DuplicateKey(String),

    /// Two tensors share a name.
    #[error("duplicate tensor name '{0}'")]
    DuplicateTensor(String),

    /// A metadata value (or array item) has a type id outside 0..=12.
    #[error("unknown metadata value type {0}")]
    UnknownValueType(u32),

    /// A tensor has a ggml type id this reader does not know.
    #[error("tensor '{tensor}' has unknown ggml type id {id}")]
    UnknownTensorType {
        /// Tensor name (empty when raised by [`GgmlType::from_id`] alone).
        tensor: String,
        /// The type id read from the file.
        id: u32,
    },

    /// A key, string value or tensor name is not valid UTF-8.
    #[error("invalid UTF-8 in {what}")]
    InvalidUtf8 {
        /// Which kind of string.
        what: &'static str,
    },

    /// A required metadata key is absent.
    #[error("metadata key '{key}' is missing")]
    MissingKey {
        /// The key asked for.
        key: String,
    },

    /// A metadata value has a type the caller cannot use.
    #[error("metadata key '{key}' has type {found}, expected {expected}")]
    WrongType {
        /// The key asked for (with `[i]` for an array item).
        key: String,
        /// What the caller wanted.
        expected: &'static str,
        /// What the file holds.
        found: &'static str,
    },

    /// A metadata integer does not fit the type the caller asked for.
    #[error("metadata key '{key}' holds a value out of range for {expected}")]
    OutOfRange {
        /// The key asked for (with `[i]` for an array item).
        key: String,
        /// What the caller wanted.
        expected: &'static str,
    },

    /// Arrays are nested deeper than [`MAX_NESTING`](crate::MAX_NESTING).
    #[error("metadata arrays nested too deeply")]
    NestingTooDeep,
}
