//! The crate's error type.

use thiserror::Error;

/// Everything that can go wrong when describing weights or buffers to the kernels.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A row length is not a whole number of blocks of the format.
    #[error("{format}: a row of {cols} values is not a multiple of the block size {block}")]
    RowNotBlockAligned {
        /// Format name.
        format: &'static str,
        /// Row length in values.
        cols: usize,
        /// Values per block.
        block: usize,
    },
    /// A buffer does not have the length its shape needs.
    #[error("{what}: expected {expected}, got {actual}")]
    ShapeMismatch {
        /// Which buffer.
        what: &'static str,
        /// Length the shape needs.
        expected: usize,
        /// Length given.
        actual: usize,
    },
    /// The byte size of a shape does not fit in `usize`.
    #[error("{format}: a {rows}x{cols} matrix is too large")]
    TooLarge {
        /// Format name.
        format: &'static str,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// The operation is not implemented for this format.
    #[error("{op} is not supported for {format}")]
    Unsupported {
        /// Operation name.
        op: &'static str,
        /// Format name.
        format: &'static str,
    },
}
