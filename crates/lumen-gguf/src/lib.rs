//! A GGUF v2/v3 reader that treats every file as hostile.
//!
//! [`GgufFile::open`] maps a model file read-only and parses its header, metadata and
//! tensor table; [`GgufFile::tensor_data`] then hands out the raw bytes of each tensor
//! straight from the map. Nothing is dequantized here: that is `lumen-kernels`' job.
//!
//! # Design
//!
//! **Hostile input, no panics.** Model files come from the network and from users, so
//! every field is validated as it is read and every failure is a typed [`GgufError`]
//! naming what was wrong (the key, the tensor, the type id). All reads go through a
//! bounds-checked cursor, all size arithmetic is checked, and the crate lints against
//! `unwrap`, `expect`, slice indexing and unchecked arithmetic outside tests. A fuzz
//! target (`fuzz/`) and a seeded mutation test back this up.
//!
//! **Counts are bounded by the bytes left, before any allocation.** A GGUF file is full
//! of counts (tensors, metadata entries, string and array lengths) that an attacker
//! controls. A 40-byte file can claim 2^64 tensors. Before a vector is sized from such a
//! count, the reader checks `count * min_encoded_size <= bytes_remaining`, where the
//! minimum size is what one item must occupy on disk (1 byte for a `u8`, 8 for a string's
//! length prefix, 12 for a nested array's header, 24 for a tensor descriptor). So a file
//! of `n` bytes can make the parser allocate only O(n) memory, whatever it claims.
//! Arrays may nest, but at most [`MAX_NESTING`] deep, so recursion cannot exhaust the stack.
//!
//! **Tensor descriptors are validated once, at parse time.** At most [`MAX_DIMS`]
//! dimensions, none zero; element and byte counts computed with checked arithmetic;
//! the row length (`dims[0]`) a whole number of quantization blocks; the data range
//! `[offset, offset + n_bytes)` inside the file and its offset aligned to the file's
//! alignment (`general.alignment`, an unsigned power of two, default 32). After that,
//! [`GgufFile::tensor_data`] is a plain slice, with no error path for callers to handle.
//!
//! **mmap, and why there are no lifetimes in the API.** Weights are hundreds of MB to many
//! GB; mapping them costs no copy, lets the OS page them in lazily and share them between
//! processes, and gives page-aligned data for SIMD kernels. [`GgufFile`] owns the map
//! (or, for tests and fuzzing, a `Vec<u8>` via [`GgufFile::from_bytes`]) together with
//! everything parsed from it. Metadata is small, so it is copied into owned [`Value`]s and
//! tensor descriptors hold offsets rather than slices. Hence `GgufFile` has no lifetime
//! parameter and no self-reference, is `Send + Sync`, and can be shared in an `Arc` by
//! the engine thread; tensor bytes are borrowed from `&self` only when asked for. The
//! one `unsafe` block is the map itself, which relies on the file not being modified
//! while open (the usual caveat of every mmap-based reader). A model about to run is read
//! instead with [`GgufFile::load`] into anonymous memory advised for transparent huge pages
//! (decode streams every weight each step, and 2 MiB pages spare it most TLB misses); the
//! API is the same.
//!
//! **Rewritten copies.** A loader that keeps weights in a layout of its own rewrites them in
//! place at load ([`GgufFile::load_rewriting`]); for a big file that takes seconds and makes
//! the rewritten pages the process's own. A [`RewriteCache`] keeps the rewritten file on
//! disk, named after the source and the rewriting's tag and tied to the source's length,
//! modification time and inode, so later loads map the copy, rewrite nothing, and share its
//! pages with every other process serving it ([`GgufFile::load_rewriting_cached`]).
//!
//! # Format
//!
//! Little-endian: magic `GGUF`, `u32` version, `u64` tensor count, `u64` metadata count,
//! the metadata entries (string key, `u32` value type, value), the tensor descriptors
//! (name, `u32` n_dims, n_dims × `u64` dims, `u32` ggml type, `u64` offset relative to
//! the data section), then the data section, which starts at the end of the
//! descriptors rounded up to the alignment.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

mod bytes;
mod cache;
mod error;
mod file;
mod metadata;
mod reader;
mod tensor;
mod types;
mod value;

pub use bytes::{FileBytes, Residency, MAP_FROM_BYTES};
pub use cache::{CacheOutcome, RewriteCache};
pub use error::GgufError;
pub use file::{GgufFile, ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
pub use metadata::Metadata;
pub use tensor::{TensorInfo, MAX_DIMS};
pub use types::GgmlType;
pub use value::{Value, MAX_NESTING};
