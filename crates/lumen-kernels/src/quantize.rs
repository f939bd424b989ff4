//! Reference weight quantizers (ggml's `quantize_row_*_ref` arithmetic): for writing test
//! models and for tests; the engine itself reads quantized weights from GGUF files.

use half::{bf16, f16};

use crate::blocks::QK;
use crate::{KernelError, WeightFormat};

/// Quantizes one row of `src.len()` values into `dst` in `format`.
///
/// K-quant formats are not supported (their ggml quantizers search scales iteratively).
pub fn quantize_row(format: WeightFormat, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    let cols = src.len();
    let need = format
        .row_bytes(cols)
        .ok_or(KernelError::RowNotBlockAligned {
            format: format.name(),
            cols,
            block: format.block_elems(),
        })?;
    if dst.len() != need {
        return Err(KernelError::ShapeMismatch {
            what: "quantize_row dst bytes",
            expected: need,
            actual: dst.len(),
        });
    }
    match format {
        WeightFormat::F32 => {
            for (o, v) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        WeightFormat::F16 => {
            for (o, v) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        WeightFormat::BF16 => {
            for (o, v) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        WeightFormat::Q4_0 => {
            for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
                quantize_block_q4_0(x, y);
            }
        }
        WeightFormat::Q4_1 => {
            for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(20)) {
                quantize_block_q4_1(x, y);
            }
        }
        WeightFormat::Q8_0 => {
            for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
                quantize_block_q8_0(x, y);
            }
        }
        WeightFormat::Q4_K
        | WeightFormat::Q5_K
        | WeightFormat::Q6_K
        | WeightFormat::Q5_0
        | WeightFormat::Q5_1
        | WeightFormat::Q2_K
        | WeightFormat::Q3_K
        | WeightFormat::IQ4_NL
        | WeightFormat::IQ4_XS => {
            return Err(KernelError::Unsupported {
                op: "quantize_row",
                format: format.name(),
            });
        }
    }
    Ok(())
}

fn put_f16(y: &mut [u8], off: usize, v: f32) {
    y[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// ggml `quantize_row_q4_0_ref` for one block.
fn quantize_block_q4_0(x: &[f32], y: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for j in 0..16 {
        let x0 = x[j] * id;
        let x1 = x[16 + j] * id;
        let q0 = ((x0 + 8.5) as i8).min(15) as u8;
        let q1 = ((x1 + 8.5) as i8).min(15) as u8;
        y[2 + j] = q0 | (q1 << 4);
    }
}

/// ggml `quantize_row_q4_1_ref` for one block.
fn quantize_block_q4_1(x: &[f32], y: &mut [u8]) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    for j in 0..16 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[16 + j] - min) * id;
        let q0 = ((x0 + 0.5) as i8).min(15) as u8;
        let q1 = ((x1 + 0.5) as i8).min(15) as u8;
        y[4 + j] = q0 | (q1 << 4);
    }
}

/// ggml `quantize_row_q8_0_ref` for one block.
fn quantize_block_q8_0(x: &[f32], y: &mut [u8]) {
    let amax = x
        .iter()
        .fold(0.0f32, |a, v| if v.abs() > a { v.abs() } else { a });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for j in 0..32 {
        y[2 + j] = (x[j] * id).round() as i8 as u8;
    }
}
