//! One BERT encoder layer: its weights and its forward pass over a ragged batch.
//!
//! MPNet's layer is the same computation (post-LN attention and GELU feed-forward); only its
//! attention tensors have other names ([`AttentionNames`]), and its scores get the
//! relative-position bias carried in [`Cx`].
//!
//! All linear layers are one kernels GEMM over every row of the batch (weights read once per
//! step, not once per sequence); the bias, residual, LayerNorm and activation that follow are
//! fused into a single row-wise pass each, split across the pool.

use std::ops::Range;

use lumen_kernels::{
    matmul, matmul_bf16, matmul_i16, Bf16Matrix, I16Matrix, I16Scratch, MatmulScratch, ThreadPool,
};

use super::attention::{attention, Heads};
use super::config::{Activation, BertConfig, Family};
use super::mpnet::RelativeBias;
use super::ops::{bias_activate, layer_norm_inplace, par_rows};
use super::precision::EncoderPrecision;
use super::weights::{MatSlot, WeightFile};
use crate::error::ModelError;

/// A linear layer `y = x Wᵀ + b`: the weight left in the file, or rounded once to the
/// arithmetic the model computes in.
pub(crate) struct Linear {
    w: MatSlot,
    rounded: Rounded,
    b: Vec<f32>,
}

/// A linear layer's weight in the model's arithmetic, when that is not f32.
enum Rounded {
    /// f32: the product reads the file's matrix.
    None,
    Bf16(Bf16Matrix),
    Int16(I16Matrix),
}

impl Linear {
    /// Loads `{name}.weight` (`out × inp`) and `{name}.bias` (`out`).
    pub(crate) fn load(
        file: &WeightFile,
        name: &str,
        out: usize,
        inp: usize,
        precision: EncoderPrecision,
    ) -> Result<Linear, ModelError> {
        let w = file.matrix(&format!("{name}.weight"), out, inp)?;
        let m = file.mat_ref(&w)?;
        let fill = |j: usize, row: &mut [f32]| m.dequantize_row(j, row);
        let rounded = match precision {
            EncoderPrecision::F32 => Rounded::None,
            EncoderPrecision::Bf16 => Rounded::Bf16(Bf16Matrix::from_rows(out, inp, fill)),
            EncoderPrecision::Int16 => Rounded::Int16(I16Matrix::from_rows(out, inp, fill)),
        };
        Ok(Linear {
            w,
            rounded,
            b: file.vector(&format!("{name}.bias"), out)?,
        })
    }

    /// `out = x Wᵀ` for the `m` rows of `x`, without the bias.
    fn matmul(
        &self,
        cx: &mut Cx<'_>,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        match &self.rounded {
            Rounded::Bf16(w) => {
                let (x, out) = (&x[..m * w.cols()], &mut out[..m * w.rows()]);
                matmul_bf16(cx.pool, w, x, m, out, &mut cx.bf16);
                return Ok(());
            }
            Rounded::Int16(w) => {
                let (x, out) = (&x[..m * w.cols()], &mut out[..m * w.rows()]);
                matmul_i16(cx.pool, w, x, m, out, &mut cx.int16);
                return Ok(());
            }
            Rounded::None => {}
        }
        let w = cx.file.mat_ref(&self.w)?;
        matmul(
            cx.pool,
            &w,
            &x[..m * self.w.cols],
            m,
            &mut out[..m * self.w.rows],
            cx.scratch,
        );
        Ok(())
    }

    /// `out = x Wᵀ + b`.
    fn forward(
        &self,
        cx: &mut Cx<'_>,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        self.matmul(cx, x, m, out)?;
        let b = &self.b;
        par_rows(cx.pool, &mut out[..m * b.len()], b.len(), |_, row| {
            for (v, &bias) in row.iter_mut().zip(b) {
                *v += bias;
            }
        });
        Ok(())
    }
}

/// LayerNorm parameters.
pub(crate) struct Norm {
    pub(crate) w: Vec<f32>,
    pub(crate) b: Vec<f32>,
}

impl Norm {
    /// Loads `{name}.weight`/`{name}.bias` (or the older `gamma`/`beta`).
    pub(crate) fn load(file: &WeightFile, name: &str, len: usize) -> Result<Norm, ModelError> {
        let w = file.vector_any(&[&format!("{name}.weight"), &format!("{name}.gamma")], len)?;
        let b = file.vector_any(&[&format!("{name}.bias"), &format!("{name}.beta")], len)?;
        Ok(Norm { w, b })
    }
}

/// Everything a layer's forward pass needs besides its own weights.
pub(crate) struct Cx<'a> {
    pub(crate) pool: &'a ThreadPool,
    pub(crate) file: &'a WeightFile,
    pub(crate) scratch: &'a mut MatmulScratch,
    /// The bf16-rounded input of the bf16 products.
    pub(crate) bf16: Vec<u16>,
    /// The integer input of the 16-bit integer products.
    pub(crate) int16: I16Scratch,
    pub(crate) heads: Heads,
    pub(crate) eps: f32,
    pub(crate) act: Activation,
    /// Row range of each sequence in the batch.
    pub(crate) seqs: &'a [Range<usize>],
    /// MPNet's relative-position bias (`None` for BERT).
    pub(crate) rel_bias: Option<&'a RelativeBias>,
}

/// Activations of one step; every buffer is sized for the largest step and used as a prefix.
#[derive(Default)]
pub(crate) struct Buffers {
    /// The residual stream, `rows × hidden`.
    pub(crate) x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    heads: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    inter: Vec<f32>,
}

impl Buffers {
    /// Grows the buffers to hold `rows` rows.
    pub(crate) fn reserve(&mut self, rows: usize, hidden: usize, intermediate: usize) {
        for b in [
            &mut self.x,
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.heads,
            &mut self.ctx,
            &mut self.tmp,
        ] {
            if b.len() < rows * hidden {
                b.resize(rows * hidden, 0.0);
            }
        }
        if self.inter.len() < rows * intermediate {
            self.inter.resize(rows * intermediate, 0.0);
        }
    }
}

/// Where each family keeps a layer's attention tensors, under `encoder.layer.N.`.
struct AttentionNames {
    query: &'static str,
    key: &'static str,
    value: &'static str,
    out: &'static str,
    norm: &'static str,
}

impl AttentionNames {
    fn of(family: Family) -> AttentionNames {
        match family {
            Family::Bert => AttentionNames {
                query: "attention.self.query",
                key: "attention.self.key",
                value: "attention.self.value",
                out: "attention.output.dense",
                norm: "attention.output.LayerNorm",
            },
            Family::MpNet => AttentionNames {
                query: "attention.attn.q",
                key: "attention.attn.k",
                value: "attention.attn.v",
                out: "attention.attn.o",
                norm: "attention.LayerNorm",
            },
        }
    }
}

/// The weights of one encoder layer.
pub(crate) struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    inter: Linear,
    out: Linear,
    out_norm: Norm,
}

impl Layer {
    /// Loads layer `i` and checks every shape against `cfg`.
    pub(crate) fn load(
        file: &WeightFile,
        cfg: &BertConfig,
        i: usize,
        precision: EncoderPrecision,
    ) -> Result<Layer, ModelError> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let linear = |name: String, out, inp| Linear::load(file, &name, out, inp, precision);
        let p = format!("encoder.layer.{i}");
        let a = AttentionNames::of(cfg.family);
        Ok(Layer {
            query: linear(format!("{p}.{}", a.query), h, h)?,
            key: linear(format!("{p}.{}", a.key), h, h)?,
            value: linear(format!("{p}.{}", a.value), h, h)?,
            attn_out: linear(format!("{p}.{}", a.out), h, h)?,
            attn_norm: Norm::load(file, &format!("{p}.{}", a.norm), h)?,
            inter: linear(format!("{p}.intermediate.dense"), f, h)?,
            out: linear(format!("{p}.output.dense"), h, f)?,
            out_norm: Norm::load(file, &format!("{p}.output.LayerNorm"), h)?,
        })
    }

    /// Runs the layer over the `rows` rows of `buf.x`, in place.
    pub(crate) fn forward(
        &self,
        cx: &mut Cx<'_>,
        buf: &mut Buffers,
        rows: usize,
    ) -> Result<(), ModelError> {
        let hidden = self.query.b.len();
        let width = self.inter.b.len();
        let n = rows * hidden;
        self.query.forward(cx, &buf.x, rows, &mut buf.q)?;
        self.key.forward(cx, &buf.x, rows, &mut buf.k)?;
        self.value.forward(cx, &buf.x, rows, &mut buf.v)?;
        let qkv = (&buf.q[..n], &buf.k[..n], &buf.v[..n]);
        attention(
            cx.pool,
            cx.heads,
            cx.seqs,
            qkv,
            cx.rel_bias,
            &mut buf.heads[..n],
            &mut buf.ctx[..n],
        );

        self.attn_out.matmul(cx, &buf.ctx, rows, &mut buf.tmp)?;
        residual_norm(
            cx,
            &mut buf.x[..n],
            &buf.tmp[..n],
            &self.attn_out.b,
            &self.attn_norm,
        );

        self.inter.matmul(cx, &buf.x, rows, &mut buf.inter)?;
        let (bias, act) = (&self.inter.b, cx.act);
        par_rows(cx.pool, &mut buf.inter[..rows * width], width, |_, row| {
            bias_activate(act, row, bias)
        });

        self.out.matmul(cx, &buf.inter, rows, &mut buf.tmp)?;
        residual_norm(
            cx,
            &mut buf.x[..n],
            &buf.tmp[..n],
            &self.out.b,
            &self.out_norm,
        );
        Ok(())
    }
}

/// `x = LayerNorm((y + bias) + x)` row by row, the order PyTorch's BERT adds them in.
fn residual_norm(cx: &Cx<'_>, x: &mut [f32], y: &[f32], bias: &[f32], norm: &Norm) {
    let (width, eps) = (bias.len(), cx.eps);
    par_rows(cx.pool, x, width, |r, row| {
        let yr = &y[r * width..(r + 1) * width];
        for ((v, &y), &b) in row.iter_mut().zip(yr).zip(bias) {
            *v += y + b;
        }
        layer_norm_inplace(row, &norm.w, &norm.b, eps);
    });
}
