//! The row-interleaved ("packed") layout of the 32-value block formats, and its reference dot.
//!
//! # Why a second layout
//!
//! In ggml's layout a block's 32 values sit in one row, so a SIMD dot gets eight partial sums
//! of *one* (weight row, activation row) pair per instruction and must convert and scale them
//! as eight float lanes before the next block: per pair and block an integer dot, a convert
//! and an FMA. That is what llama.cpp does, and it caps a 32-sequence decode step at about a
//! third of what the integer units could do (measured in issue 6's notes).
//!
//! Here the rows are taken eight at a time ("groups") and, per block, their bytes are
//! interleaved four at a time: lane `j` of a 32-byte vector holds four consecutive values of
//! row `j`. One `vpdpbusd` (or `maddubs` + `madd`) with four activation bytes broadcast to all
//! lanes then adds four products to each of eight *different* rows' sums, so after the eight
//! such steps of a block every lane holds one row's exact block sum. The float work (a convert,
//! the scale product and one FMA, plus Q4_1's min term) is then shared by eight pairs instead
//! of being repeated for each, and the tile becomes bound by the integer dots alone.
//!
//! # The record
//!
//! Group `g` (rows `8g..8g+8`, zero rows padding the last group) stores its blocks one after
//! the other, so a thread streaming its groups reads memory linearly. Record `(g, b)` is
//! exactly as long as the eight rows' ggml blocks (so a matrix is rewritten in place):
//!
//! | bytes | Q4_0 | Q4_1 | Q8_0 | Q5_0 | Q5_1 |
//! | --- | --- | --- | --- | --- | --- |
//! | `d`, eight f16 | 0..16 | 0..16 | 0..16 | 0..16 | 0..16 |
//! | `m`, eight f16 | - | 16..32 | - | - | 16..32 |
//! | fifth bits | - | - | - | 16..48 | 32..64 |
//! | quants | 16..144 | 32..160 | 16..272 | 48..176 | 64..192 |
//!
//! Quants are 32-byte vectors; byte `4j + t` of vector `v` is row `j`'s byte `4v + t` of the
//! block's ggml quants. For the 4- and 5-bit formats that byte carries elements `4v + t` (low
//! nibble) and `16 + 4v + t` (high nibble), so vectors `0..4` pair with activation chunks `v`
//! and `v + 4`; for Q8_0 vector `v` holds elements `4v..4v + 4`.
//!
//! The fifth bits (ggml's `qh`, one 32-bit word per row and block) are re-laid as one 32-byte
//! vector in the quants' byte order: bit `2v` of byte `4j + t` is the fifth bit of the low
//! nibble of quant vector `v`'s byte `4j + t`, bit `2v + 1` that of its high nibble. A tile
//! then moves vector `v`'s fifth bits to bit 4 of every byte with one 16-bit shift and one
//! mask each (bits that cross a byte boundary in the shift never reach bit 4), where ggml's
//! word needs a shuffle, a compare and a mask per eight values.
//!
//! # The arithmetic
//!
//! Per (weight row, activation row) pair and block `b`, with `isum` the exact integer dot of
//! the block's signed weight values with the activation quants:
//! `acc = fma(isum as f32, d_w * d_x, acc)`, then for Q4_1 and Q5_1 `acc = fma(m_w, s_x, acc)`;
//! the output is `acc` after the last block. [`dot`] is that, one pair at a time, and every
//! SIMD tile evaluates it lane-wise in the same order, so all paths agree bit for bit and no
//! result depends on which rows share a call. It is not llama.cpp's summation order (that
//! one lives on in the ggml-layout kernels), so results differ from it by float rounding.

use crate::act::ActBuf;
use crate::blocks::{f16_at, QK};
use crate::kpacked::{self, KPACK_ROWS};
use crate::{KernelError, WeightFormat};

/// Rows per interleaved group.
pub const PACK_ROWS: usize = 8;

/// Version of the bytes [`pack_group`] writes, for every format. Packed copies of model files
/// kept on disk are named after it (`lumen_models`' packed cache), so a build whose layout
/// differs never computes with an older build's bytes: change it with any change to a packed
/// record (the `packed_bytes_are_versioned` test holds a digest of each format's layout and
/// fails until both are updated).
pub const PACKED_LAYOUT_VERSION: u32 = 2;

/// Bytes before the quants in a record (the scales, and the fifth bits of Q5_0 and Q5_1).
pub(crate) const fn scale_bytes(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Q4_1 => 32,
        WeightFormat::Q5_0 => 48,
        WeightFormat::Q5_1 => 64,
        _ => 16,
    }
}

/// Where a record's fifth-bit vector starts (Q5_0, Q5_1; the module doc's layout).
pub(crate) const fn fifth_bits_at(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Q5_1 => 32,
        _ => 16,
    }
}

/// Whether the format's values have a fifth bit (Q5_0, Q5_1).
pub(crate) const fn has_fifth_bit(format: WeightFormat) -> bool {
    matches!(format, WeightFormat::Q5_0 | WeightFormat::Q5_1)
}

/// Bytes of one (group, block) record, or `None` for a format without a packed layout.
pub(crate) const fn record_bytes(format: WeightFormat) -> Option<usize> {
    match format {
        WeightFormat::Q4_0 => Some(144),
        WeightFormat::Q4_1 => Some(160),
        WeightFormat::Q8_0 => Some(272),
        WeightFormat::Q5_0 => Some(176),
        WeightFormat::Q5_1 => Some(192),
        _ => None,
    }
}

/// Whether `format` has a packed layout: the 32-value block formats here, and Q4_K, Q5_K and Q6_K
/// in sixteen-row groups (the `kpacked` module).
pub fn packs(format: WeightFormat) -> bool {
    record_bytes(format).is_some() || kpacked::kpacks(format)
}

/// Rows per packed group of `format`: [`PACK_ROWS`], or [`KPACK_ROWS`] for the K-quants.
pub fn pack_rows(format: WeightFormat) -> usize {
    if kpacked::kpacks(format) {
        KPACK_ROWS
    } else {
        PACK_ROWS
    }
}

/// Bytes of one packed group of `cols` columns.
pub fn packed_group_bytes(format: WeightFormat, cols: usize) -> Result<usize, KernelError> {
    if kpacked::kpacks(format) {
        return kpacked::group_bytes(format, cols);
    }
    let rec = record_bytes(format).ok_or(KernelError::Unsupported {
        op: "packed layout",
        format: format.name(),
    })?;
    if !cols.is_multiple_of(QK) {
        return Err(KernelError::RowNotBlockAligned {
            format: format.name(),
            cols,
            block: QK,
        });
    }
    (cols / QK).checked_mul(rec).ok_or(KernelError::TooLarge {
        format: format.name(),
        rows: PACK_ROWS,
        cols,
    })
}

/// Bytes of a packed `rows x cols` matrix (rows rounded up to whole groups).
pub fn packed_len(format: WeightFormat, rows: usize, cols: usize) -> Result<usize, KernelError> {
    packed_group_bytes(format, cols)?
        .checked_mul(rows.div_ceil(pack_rows(format)))
        .ok_or(KernelError::TooLarge {
            format: format.name(),
            rows,
            cols,
        })
}

/// Packs up to [`pack_rows`] consecutive ggml-layout rows (`src`, whole rows) into one group
/// (`dst`, [`packed_group_bytes`] long). Missing rows are zero (they compute to 0).
pub fn pack_group(
    format: WeightFormat,
    cols: usize,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let group = packed_group_bytes(format, cols)?;
    let unsupported = KernelError::Unsupported {
        op: "packed layout",
        format: format.name(),
    };
    let rb = format.row_bytes(cols).ok_or(unsupported.clone())?;
    if dst.len() != group {
        return Err(KernelError::ShapeMismatch {
            what: "packed group bytes",
            expected: group,
            actual: dst.len(),
        });
    }
    let n = pack_rows(format);
    if !src.len().is_multiple_of(rb.max(1)) || src.len() > n * rb {
        return Err(KernelError::ShapeMismatch {
            what: "rows packed into one group",
            expected: n * rb,
            actual: src.len(),
        });
    }
    if kpacked::kpacks(format) {
        kpacked::pack_group(format, cols, src, dst);
        return Ok(());
    }
    let rec = record_bytes(format).ok_or(unsupported)?;
    dst.fill(0);
    let (bb, sb) = (format.block_bytes(), scale_bytes(format));
    // The ggml block starts with d (and m for Q4_1 and Q5_1), then Q5's `qh`, then the quants.
    let m_bytes = if format.has_min() { 2 } else { 0 };
    let qh_off = 2 + m_bytes;
    let q_off = qh_off + if has_fifth_bit(format) { 4 } else { 0 };
    for (j, row) in src.chunks_exact(rb.max(1)).enumerate() {
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            let r = &mut dst[b * rec..(b + 1) * rec];
            r[2 * j..2 * j + 2].copy_from_slice(&blk[0..2]);
            if format.has_min() {
                r[16 + 2 * j..16 + 2 * j + 2].copy_from_slice(&blk[2..4]);
            }
            if has_fifth_bit(format) {
                let qh = u32::from_le_bytes([
                    blk[qh_off],
                    blk[qh_off + 1],
                    blk[qh_off + 2],
                    blk[qh_off + 3],
                ]);
                for t in 0..4 {
                    r[fifth_bits_at(format) + 4 * j + t] = fifth_bits_byte(qh, t);
                }
            }
            let qs = &blk[q_off..];
            for v in 0..qs.len() / 4 {
                let at = sb + 32 * v + 4 * j;
                r[at..at + 4].copy_from_slice(&qs[4 * v..4 * v + 4]);
            }
        }
    }
    Ok(())
}

/// Byte `t` of a row's fifth-bit lane from its ggml `qh`: bit `2v` is element `4v + t`'s fifth
/// bit, bit `2v + 1` element `16 + 4v + t`'s.
fn fifth_bits_byte(qh: u32, t: usize) -> u8 {
    (0..4).fold(0u8, |byte, v| {
        let lo = (qh >> (4 * v + t)) & 1;
        let hi = (qh >> (16 + 4 * v + t)) & 1;
        byte | ((lo as u8) << (2 * v)) | ((hi as u8) << (2 * v + 1))
    })
}

/// Packs a whole ggml-layout matrix.
pub fn pack(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    src: &[u8],
) -> Result<Vec<u8>, KernelError> {
    // The same shape check as any ggml-layout matrix.
    let rb = crate::MatRef::new(format, rows, cols, src)?.row_bytes();
    let group = packed_group_bytes(format, cols)?;
    let mut out = vec![0u8; packed_len(format, rows, cols)?];
    if group > 0 {
        for (dst, src) in out
            .chunks_exact_mut(group)
            .zip(src.chunks(pack_rows(format) * rb.max(1)))
        {
            pack_group(format, cols, src, dst)?;
        }
    }
    Ok(out)
}

/// Row `r`'s lane in its group, and its group's records (one per block, in order).
fn row_records(
    format: WeightFormat,
    data: &[u8],
    cols: usize,
    r: usize,
) -> (usize, std::slice::ChunksExact<'_, u8>) {
    // Only called for a packed MatRef, whose format has records (checked at construction).
    let rec = record_bytes(format).unwrap_or(1);
    let group = (cols / QK) * rec;
    let g = r / PACK_ROWS;
    (
        r % PACK_ROWS,
        data[g * group..(g + 1) * group].chunks_exact(rec),
    )
}

/// Weight value `e` (0..32) of row `j` in record `r`, as ggml defines it (Q4_1 and Q5_1
/// unsigned, the others signed).
#[inline]
fn value(format: WeightFormat, r: &[u8], j: usize, e: usize) -> i32 {
    let sb = scale_bytes(format);
    if format == WeightFormat::Q8_0 {
        return r[sb + 32 * (e / 4) + 4 * j + e % 4] as i8 as i32;
    }
    let (v, t, high) = ((e % 16) / 4, e % 4, e >= 16);
    let byte = r[sb + 32 * v + 4 * j + t];
    let mut q = if high { byte >> 4 } else { byte & 0xF } as i32;
    if has_fifth_bit(format) {
        let bits = r[fifth_bits_at(format) + 4 * j + t];
        q |= (((bits >> (2 * v + high as usize)) & 1) as i32) << 4;
    }
    match format {
        WeightFormat::Q4_0 => q - 8,
        WeightFormat::Q5_0 => q - 16,
        _ => q,
    }
}

/// Row `r` of a packed matrix (`data`, `cols` columns) as f32.
pub(crate) fn dequantize_row(
    format: WeightFormat,
    data: &[u8],
    cols: usize,
    r: usize,
    out: &mut [f32],
) {
    if kpacked::kpacks(format) {
        return kpacked::dequantize_row(format, data, cols, r, out);
    }
    let (j, records) = row_records(format, data, cols, r);
    for (b, rd) in records.enumerate() {
        let d = f16_at(rd, 2 * j);
        for e in 0..QK {
            let v = value(format, rd, j, e) as f32 * d;
            // As ggml: only Q4_1 and Q5_1 add their min (adding 0.0 would turn -0.0 into 0.0).
            out[b * QK + e] = if format.has_min() {
                v + f16_at(rd, 16 + 2 * j)
            } else {
                v
            };
        }
    }
}

/// The reference dot of packed row `r` with activation row `i` (the arithmetic in the module
/// doc; the SIMD tiles must match it bit for bit).
pub(crate) fn dot(
    format: WeightFormat,
    data: &[u8],
    cols: usize,
    r: usize,
    a: &ActBuf,
    i: usize,
) -> f32 {
    if kpacked::kpacks(format) {
        return kpacked::dot(format, data, cols, r, a, i);
    }
    let (j, records) = row_records(format, data, cols, r);
    let xq = a.row_qs(i);
    let mut acc = 0.0f32;
    for (b, rd) in records.enumerate() {
        let x = &xq[b * QK..(b + 1) * QK];
        let isum: i32 = (0..QK).map(|e| value(format, rd, j, e) * x[e] as i32).sum();
        let k = a.at(b, i);
        acc = (isum as f32).mul_add(f16_at(rd, 2 * j) * a.d[k], acc);
        if format.has_min() {
            acc = f16_at(rd, 16 + 2 * j).mul_add(a.s[k], acc);
        }
    }
    acc
}
