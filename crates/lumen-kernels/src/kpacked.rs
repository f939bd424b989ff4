//! The row-interleaved ("packed") layout of the K-quants Q4_K, Q5_K and Q6_K.
//!
//! # Why
//!
//! The ggml-layout K-quant tiles ([`crate::x86`]'s `kquant_tiles`) unpack a super-block of one
//! row, dot it with an activation row in 32 partial sums, reduce those across lanes and
//! finish with one scalar float update per (row, activation row, super-block). Reductions
//! and scalar stores were about half of a tile's work. Here sixteen rows are interleaved four
//! bytes at a time, as the 32-value formats are in [`crate::packed`]: lane `j` of a 64-byte
//! vector holds four quant bytes of row `j`, one `vpdpbusd` with four activation bytes
//! broadcast adds four products to each of sixteen rows' sums, and the sub-block scales,
//! the mins and the float update are applied to sixteen rows at once. Nothing is reduced
//! across lanes.
//!
//! # The record
//!
//! Group `g` (rows `16g..16g+16`, zero rows padding the last group) stores its super-blocks one
//! after the other. A record is exactly as long as its sixteen ggml blocks, so the loader
//! rewrites a matrix in place. Lane `j` below is row `j` of the group.
//!
//! Q4_K, 2,304 bytes:
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..32 | `d`, sixteen f16 |
//! | 32..64 | `dmin`, sixteen f16 |
//! | 64..192 | byte `16s + j`: low four bits of scale `s` (low nibble) and of min `s` |
//! | 192..256 | byte `16k + j`: the two high bits of scale `2k`, min `2k`, scale `2k+1`, min `2k+1` (bits 0-1, 2-3, 4-5, 6-7) |
//! | 256..2304 | 32 vectors of 64 bytes; byte `4j + t` of vector `v` is row `j`'s quant byte `4v + t` |
//!
//! Q5_K, 2,816 bytes: Q4_K's first 256 bytes, then
//!
//! | bytes | what |
//! | --- | --- |
//! | 256..768 | 8 vectors: byte `4j + t` of vector `v` is row `j`'s `qh` byte `4v + t` |
//! | 768..2816 | the nibbles, as Q4_K's quants |
//!
//! Q6_K, 3,360 bytes:
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..32 | `d`, sixteen f16 |
//! | 32..288 | byte `16s + j`: scale `s` (i8) of row `j` |
//! | 288..3360 | 16 pieces of three vectors `A`, `B`, `C` (below) |
//!
//! So a Q4_K or Q5_K vector's lane holds the same values a four-byte piece of the ggml block
//! does, and the kernels decode nibbles and high bits exactly as ggml does, one lane per row.
//!
//! A Q6_K piece `8n + u` holds one set of values (ggml's q1..q4 of 32 columns, built from `ql`
//! vectors `16n + u` and `16n + 8 + u` and `qh` vector `8n + u`), each value whole in the low
//! six bits of a byte: byte `4j + t` of `A`, `B` and `C` is row `j`'s q1, q2 and q3 of column
//! `128n + 4u + t` (+32, as ggml stores them), and their top two bits hold q4's bits 0-1, 2-3
//! and 4-5 ([`q6_piece`]). A kernel gets q1..q3 with one mask each and q4 with three shifts,
//! three masks and two ors (11 operations per piece and half, against 17 for ggml's nibbles
//! and high-bit pairs), the lion's share of a Q6_K decode pass's work. A piece's three vectors
//! lie together, in the order the kernels read them: with the values in two runs a decoding
//! stream, bound by memory, jumped between places in every record and ran ~15 % slower.
//!
//! # The arithmetic
//!
//! The same as the ggml layout's: per super-block the exact integer sums `sumi` (scales
//! applied) and `summ` (mins, Q4_K), then `acc += (d * dy) * sumi - (dmin * dy) * summ`. So a
//! packed matrix gives the same bits as its ggml-layout original, at every CPU level, and
//! the scalar reference here simply rebuilds the row's ggml blocks.

use crate::act::ActBuf;
use crate::blocks::k4_scales_mins;
use crate::{KernelError, WeightFormat};

/// Rows per interleaved K-quant group.
pub const KPACK_ROWS: usize = 16;

/// Whether `format` has this packed layout.
pub(crate) const fn kpacks(format: WeightFormat) -> bool {
    matches!(
        format,
        WeightFormat::Q4_K | WeightFormat::Q5_K | WeightFormat::Q6_K
    )
}

/// Values per super-block.
const QK_K: usize = 256;

/// Bytes of one (group, super-block) record: sixteen ggml blocks.
pub(crate) fn record_bytes(format: WeightFormat) -> usize {
    KPACK_ROWS * format.block_bytes()
}

/// Q4_K record offsets.
pub(crate) mod q4k {
    pub(crate) const D: usize = 0;
    pub(crate) const DMIN: usize = 32;
    pub(crate) const LOW: usize = 64;
    pub(crate) const HIGH: usize = 192;
    pub(crate) const QS: usize = 256;
}

/// Q5_K record offsets: Q4_K's scales, then the high bits, then the nibbles.
pub(crate) mod q5k {
    pub(crate) const QH: usize = 256;
    pub(crate) const QS: usize = 768;
}

/// Q6_K record offsets.
pub(crate) mod q6k {
    pub(crate) const D: usize = 0;
    pub(crate) const SC: usize = 32;
    /// The pieces of values: three vectors each (see the module's table).
    pub(crate) const VALS: usize = 288;
}

/// Each byte's low two, low four and low six bits, four bytes at a time.
const M2: u32 = 0x0303_0303;
const M4: u32 = 0x0F0F_0F0F;
const M6: u32 = 0x3F3F_3F3F;

/// Q6_K piece `8n + u`'s bytes for columns `128n + 4u ..+4` (one byte per column, four at
/// once) from ggml's `ql` bytes `qa` (vector `16n + u`), `qb` (`16n + 8 + u`) and `qh` bytes
/// `hb` (vector `8n + u`): `[A, B, C]`, q1..q3 in their low six bits, q4's three bit pairs in
/// their top two. Each mask is applied before its shift, so no bit crosses into another byte.
pub(crate) fn q6_piece(qa: u32, qb: u32, hb: u32) -> [u32; 3] {
    let q = [
        qa & M4 | (hb & M2) << 4,
        qb & M4 | (hb >> 2 & M2) << 4,
        qa >> 4 & M4 | (hb >> 4 & M2) << 4,
        qb >> 4 & M4 | (hb >> 6 & M2) << 4,
    ];
    [
        q[0] | (q[3] & M2) << 6,
        q[1] | (q[3] >> 2 & M2) << 6,
        q[2] | (q[3] >> 4 & M2) << 6,
    ]
}

/// The inverse of [`q6_piece`]: `(qa, qb, hb)`.
pub(crate) fn q6_unpiece([a, b, c]: [u32; 3]) -> (u32, u32, u32) {
    let q3 = a >> 6 & M2 | (b >> 6 & M2) << 2 | (c >> 6 & M2) << 4;
    let q = [a & M6, b & M6, c & M6, q3];
    (
        q[0] & M4 | (q[2] & M4) << 4,
        q[1] & M4 | (q[3] & M4) << 4,
        q[0] >> 4 & M2 | (q[1] >> 4 & M2) << 2 | (q[2] >> 4 & M2) << 4 | (q[3] >> 4 & M2) << 6,
    )
}

/// The four bytes at `at`, little-endian.
fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Offsets in a ggml Q6_K block of piece `p`'s `ql` bytes (two runs of four) and `qh` bytes.
fn q6_sources(p: usize) -> (usize, usize, usize) {
    let (n, u) = (p / 8, p % 8);
    (
        4 * (16 * n + u),
        4 * (16 * n + 8 + u),
        128 + 4 * (8 * n + u),
    )
}

/// Interleaves `bytes` (a multiple of four) of row `j` into the vectors at `dst`: the row's
/// four-byte piece `v` goes to lane `j` of vector `v`.
fn interleave(dst: &mut [u8], j: usize, bytes: &[u8]) {
    for (v, piece) in bytes.chunks_exact(4).enumerate() {
        let at = 64 * v + 4 * j;
        dst[at..at + 4].copy_from_slice(piece);
    }
}

/// The inverse of [`interleave`].
fn gather(src: &[u8], j: usize, bytes: &mut [u8]) {
    for (v, piece) in bytes.chunks_exact_mut(4).enumerate() {
        let at = 64 * v + 4 * j;
        piece.copy_from_slice(&src[at..at + 4]);
    }
}

/// Writes ggml block `blk` as lane `j` of record `rec`.
fn put_block(format: WeightFormat, rec: &mut [u8], j: usize, blk: &[u8]) {
    if format != WeightFormat::Q6_K {
        rec[q4k::D + 2 * j..][..2].copy_from_slice(&blk[0..2]);
        rec[q4k::DMIN + 2 * j..][..2].copy_from_slice(&blk[2..4]);
        let (sc, mn) = k4_scales_mins(&blk[4..16]);
        for s in 0..8 {
            rec[q4k::LOW + 16 * s + j] = (sc[s] & 0xF) | (mn[s] & 0xF) << 4;
        }
        for k in 0..4 {
            let hi = |v: u8| v >> 4;
            rec[q4k::HIGH + 16 * k + j] = hi(sc[2 * k])
                | hi(mn[2 * k]) << 2
                | hi(sc[2 * k + 1]) << 4
                | hi(mn[2 * k + 1]) << 6;
        }
        if format == WeightFormat::Q5_K {
            interleave(&mut rec[q5k::QH..q5k::QS], j, &blk[16..48]);
            interleave(&mut rec[q5k::QS..], j, &blk[48..176]);
        } else {
            interleave(&mut rec[q4k::QS..], j, &blk[16..144]);
        }
    } else {
        rec[q6k::D + 2 * j..][..2].copy_from_slice(&blk[208..210]);
        for s in 0..16 {
            rec[q6k::SC + 16 * s + j] = blk[192 + s];
        }
        for p in 0..16 {
            let (a, b, h) = q6_sources(p);
            let abc = q6_piece(word(blk, a), word(blk, b), word(blk, h));
            for (k, v) in abc.into_iter().enumerate() {
                let at = q6k::VALS + 64 * (3 * p + k) + 4 * j;
                rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Rebuilds lane `j` of record `rec` as a ggml block (`blk`, the format's block bytes).
fn get_block(format: WeightFormat, rec: &[u8], j: usize, blk: &mut [u8]) {
    if format != WeightFormat::Q6_K {
        blk[0..2].copy_from_slice(&rec[q4k::D + 2 * j..][..2]);
        blk[2..4].copy_from_slice(&rec[q4k::DMIN + 2 * j..][..2]);
        let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
        for s in 0..8 {
            let low = rec[q4k::LOW + 16 * s + j];
            let high = rec[q4k::HIGH + 16 * (s / 2) + j] >> (4 * (s % 2));
            sc[s] = (low & 0xF) | (high & 3) << 4;
            mn[s] = (low >> 4) | (high >> 2 & 3) << 4;
        }
        // ggml's 12-byte packing of eight 6-bit scales and mins (the inverse of
        // `k4_scales_mins`): every bit is used, so this round-trips exactly.
        for k in 0..4 {
            blk[4 + k] = sc[k] | (sc[k + 4] >> 4) << 6;
            blk[8 + k] = mn[k] | (mn[k + 4] >> 4) << 6;
            blk[12 + k] = (sc[k + 4] & 0xF) | (mn[k + 4] & 0xF) << 4;
        }
        if format == WeightFormat::Q5_K {
            gather(&rec[q5k::QH..q5k::QS], j, &mut blk[16..48]);
            gather(&rec[q5k::QS..], j, &mut blk[48..176]);
        } else {
            gather(&rec[q4k::QS..], j, &mut blk[16..144]);
        }
    } else {
        blk[208..210].copy_from_slice(&rec[q6k::D + 2 * j..][..2]);
        for s in 0..16 {
            blk[192 + s] = rec[q6k::SC + 16 * s + j];
        }
        for p in 0..16 {
            let (a, b, h) = q6_sources(p);
            let at = |k: usize| word(rec, q6k::VALS + 64 * (3 * p + k) + 4 * j);
            let (qa, qb, hb) = q6_unpiece([at(0), at(1), at(2)]);
            for (o, v) in [(a, qa), (b, qb), (h, hb)] {
                blk[o..o + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Packs up to [`KPACK_ROWS`] whole ggml rows (`src`) into one group (`dst`); `group` is the
/// group's byte count (checked by the caller). Missing rows are zero.
pub(crate) fn pack_group(format: WeightFormat, cols: usize, src: &[u8], dst: &mut [u8]) {
    let (bb, rec) = (format.block_bytes(), record_bytes(format));
    let rb = (cols / QK_K) * bb;
    dst.fill(0);
    if rb == 0 {
        return;
    }
    for (j, row) in src.chunks_exact(rb).enumerate() {
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            put_block(format, &mut dst[b * rec..(b + 1) * rec], j, blk);
        }
    }
}

/// Row `r` of a packed matrix (`data`, `cols` columns) rebuilt in ggml's layout.
pub(crate) fn ggml_row(format: WeightFormat, data: &[u8], cols: usize, r: usize) -> Vec<u8> {
    let (bb, rec, nb) = (format.block_bytes(), record_bytes(format), cols / QK_K);
    let group = &data[(r / KPACK_ROWS) * nb * rec..][..nb * rec];
    let mut row = vec![0u8; nb * bb];
    for (blk, rd) in row.chunks_exact_mut(bb).zip(group.chunks_exact(rec)) {
        get_block(format, rd, r % KPACK_ROWS, blk);
    }
    row
}

/// Row `r` as f32, exactly as its ggml blocks dequantize.
pub(crate) fn dequantize_row(
    format: WeightFormat,
    data: &[u8],
    cols: usize,
    r: usize,
    out: &mut [f32],
) {
    crate::dequant::dequantize_row(format, &ggml_row(format, data, cols, r), out);
}

/// The reference dot of packed row `r` with activation row `i`: the ggml layout's, on the
/// rebuilt row (the SIMD tiles must match it bit for bit).
pub(crate) fn dot(
    format: WeightFormat,
    data: &[u8],
    cols: usize,
    r: usize,
    a: &ActBuf,
    i: usize,
) -> f32 {
    // The K-quant dots read only the quantized activations, never `x`.
    crate::dot::dot(format, &ggml_row(format, data, cols, r), &[], a, i)
}

/// Bytes of one packed group of `cols` columns.
pub(crate) fn group_bytes(format: WeightFormat, cols: usize) -> Result<usize, KernelError> {
    if !cols.is_multiple_of(QK_K) {
        return Err(KernelError::RowNotBlockAligned {
            format: format.name(),
            cols,
            block: QK_K,
        });
    }
    (cols / QK_K)
        .checked_mul(record_bytes(format))
        .ok_or(KernelError::TooLarge {
            format: format.name(),
            rows: KPACK_ROWS,
            cols,
        })
}
