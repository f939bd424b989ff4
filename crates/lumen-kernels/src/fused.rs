//! Row ops that also quantize their output for the matmul that reads it next.
//!
//! A matmul first quantizes its input rows (llama.cpp's Q8 activation blocks), split over the
//! pool in a pass of its own: a dispatch, and each thread reading rows another thread just
//! wrote. Here the op that produces the rows (RMSNorm, residual add + RMSNorm, SwiGLU)
//! quantizes each part's rows right after computing them, on the same thread, and hands back a
//! [`QuantizedInput`] for [`matmul_quantized`]. The quantization is the one `matmul` would
//! do, so results are the same bits.
//!
//! [`matmul_quantized`]: crate::matmul_quantized

use std::ops::Range;

use crate::act::Fill;
use crate::matmul::{MatRef, MatmulScratch, QuantizedInput};
use crate::ops;
use crate::pool::ThreadPool;

/// [`ops::rms_norm_rows`] of `x` into `out`, quantized for `next`.
pub fn rms_norm_rows<'a>(
    pool: &ThreadPool,
    x: &[f32],
    weight: &[f32],
    eps: f32,
    out: &'a mut [f32],
    next: &MatRef,
    scratch: &'a mut MatmulScratch,
) -> QuantizedInput<'a> {
    assert_eq!(
        weight.len(),
        next.cols(),
        "fused rms_norm_rows: rows do not match the next matrix"
    );
    let q = Quantizer::begin(next, out.len(), scratch);
    ops::rms_norm_rows_then(pool, x, weight, eps, out, |rows, range| q.rows(rows, range));
    q.finish(out, scratch)
}

/// [`ops::add_rms_norm_rows`] into `out`, quantized for `next`.
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm_rows<'a>(
    pool: &ThreadPool,
    x: &mut [f32],
    residual: &[f32],
    weight: &[f32],
    eps: f32,
    out: &'a mut [f32],
    next: &MatRef,
    scratch: &'a mut MatmulScratch,
) -> QuantizedInput<'a> {
    assert_eq!(
        weight.len(),
        next.cols(),
        "fused add_rms_norm_rows: rows do not match the next matrix"
    );
    let q = Quantizer::begin(next, out.len(), scratch);
    ops::add_rms_norm_rows_then(pool, x, residual, weight, eps, out, |rows, range| {
        q.rows(rows, range)
    });
    q.finish(out, scratch)
}

/// [`ops::swiglu_rows`] into `gate`, quantized for `next` (whose rows are `row_len` long).
pub fn swiglu_rows<'a>(
    pool: &ThreadPool,
    gate: &'a mut [f32],
    up: &[f32],
    row_len: usize,
    next: &MatRef,
    scratch: &'a mut MatmulScratch,
) -> QuantizedInput<'a> {
    assert_eq!(
        row_len,
        next.cols(),
        "fused swiglu_rows: rows do not match the next matrix"
    );
    let q = Quantizer::begin(next, gate.len(), scratch);
    ops::swiglu_rows_then(pool, gate, up, row_len, |rows, range| q.rows(rows, range));
    q.finish(gate, scratch)
}

/// Fills a scratch's activation buffer part by part.
struct Quantizer {
    kind: crate::act::ActKind,
    fill: Option<Fill>,
    level: crate::CpuLevel,
    m: usize,
}

impl Quantizer {
    /// Sizes `scratch` for `len / next.cols()` rows in `next`'s activation format.
    fn begin(next: &MatRef, len: usize, scratch: &mut MatmulScratch) -> Quantizer {
        let cols = next.cols();
        assert!(
            cols > 0 && len.is_multiple_of(cols),
            "fused op: {len} values are not rows of {cols}"
        );
        let (kind, m) = (next.format().act_kind(), len / cols);
        Quantizer {
            kind,
            fill: scratch.act.begin(kind, m, cols),
            level: scratch.level(),
            m,
        }
    }

    /// Quantizes `range` (whose values are `rows`).
    fn rows(&self, rows: &[f32], range: Range<usize>) {
        if let Some(fill) = self.fill {
            // SAFETY: `begin` sized the buffer for all m rows; the scratch stays mutably
            // borrowed by the caller (so alive and unmoved) until `finish`; each part of the
            // producing op gets distinct rows.
            unsafe { fill.rows(self.kind, rows, range, self.level) }
        }
    }

    fn finish<'a>(self, x: &'a [f32], scratch: &'a mut MatmulScratch) -> QuantizedInput<'a> {
        QuantizedInput {
            x,
            m: self.m,
            kind: self.kind,
            scratch,
        }
    }
}
