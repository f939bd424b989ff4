//! The forward pass over a ragged batch.
//!
//! A step's input is the new tokens of every scheduled sequence laid end to end. Linear layers
//! run as one GEMM over all those rows (weights read once per step); attention runs per token
//! over its own sequence's blocks; logits are computed only for the rows that ask for them.

use lumen_kernels::attention::{paged_attention, store_step, AttnQuery, AttnScratch};
use lumen_kernels::ops::{add_inplace, rms_norm, rms_norm_heads_inplace};
use lumen_kernels::{fused, matmul, matmul_quantized, MatmulScratch, ThreadPool};

use super::hook::Observer;
use super::model::LlamaModel;
use crate::kv::KvStorage;
use crate::weights::Linear;
use crate::ModelError;

/// Which logits a sequence wants back from a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that is not the prompt's last).
    None,
    /// Only the last token's (to sample the next token).
    Last,
    /// Every token's (prompt logprobs).
    All,
}

/// One sequence's share of a step.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    /// The tokens to run now.
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the KV cache (the first new token's position).
    pub start_pos: usize,
    /// The sequence's KV blocks, enough for `start_pos + tokens.len()` positions.
    pub block_table: &'a [u32],
    /// Which logits to return.
    pub logits: LogitsWanted,
    /// Length of the sequence's prompt. Positions below it are prompt tokens and follow
    /// llama.cpp's arithmetic for multi-token batches; later positions are generated tokens and
    /// follow its single-token decode arithmetic (a one-token prompt counts as generated, as in
    /// llama.cpp). The choice depends only on the position, never on how the work is batched.
    pub prompt_len: usize,
}

/// Activation buffers reused from step to step, so a steady-state step allocates nothing.
#[derive(Default)]
pub struct ForwardWorkspace {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    cos_sin: Vec<f32>,
    selected: Vec<f32>,
    logits: Vec<f32>,
    mm: MatmulScratch,
    attn_scratch: AttnScratch,
    /// Cache slots written in a step (scratch of `store_step`).
    slots: Vec<usize>,
    /// The attention queries' storage, kept empty between steps (see `recycle`).
    queries: Vec<AttnQuery<'static>>,
}

/// Reuses an empty vector's allocation for another lifetime of the same type; collecting a
/// mapped `into_iter` of an equal-layout type happens in place, so this never allocates.
fn recycle<'a, 'b>(mut v: Vec<AttnQuery<'a>>) -> Vec<AttnQuery<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

impl ForwardWorkspace {
    /// An empty workspace; buffers grow to the largest batch seen.
    pub fn new() -> Self {
        Self::default()
    }
}

fn grow(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

fn add_bias_rows(x: &mut [f32], bias: Option<&Vec<f32>>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            add_inplace(row, b);
        }
    }
}

impl LlamaModel {
    fn check_batch(&self, seqs: &[SeqChunk<'_>], kv: &KvStorage) -> Result<usize, ModelError> {
        let geo = kv.geometry();
        if geo != self.kv_geometry(geo.block_size) {
            return Err(ModelError::BadBatch(
                "KV cache geometry does not match the model".into(),
            ));
        }
        let mut total = 0usize;
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::BadBatch(format!("sequence {i} has no tokens")));
            }
            if let Some(&t) = s
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.config.vocab_size)
            {
                return Err(ModelError::BadBatch(format!(
                    "token id {t} is outside the vocabulary ({})",
                    self.config.vocab_size
                )));
            }
            let end = s.start_pos + s.tokens.len();
            if end.div_ceil(geo.block_size) > s.block_table.len() {
                return Err(ModelError::BadBatch(format!(
                    "sequence {i}: block table too short for {end} positions"
                )));
            }
            if let Some(&b) = s.block_table.iter().find(|&&b| b as usize >= kv.n_blocks()) {
                return Err(ModelError::BadBatch(format!(
                    "sequence {i}: block {b} outside the pool"
                )));
            }
            total += s.tokens.len();
        }
        Ok(total)
    }

    fn linear(
        &self,
        pool: &ThreadPool,
        w: &Linear,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        mm: &mut MatmulScratch,
    ) {
        matmul(pool, &w.mat(&self.file), x, m, out, mm);
    }

    /// Runs one step; returns the requested logits rows (`vocab_size` each), in batch order.
    pub fn forward<'w>(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqChunk<'_>],
        kv: &mut KvStorage,
        ws: &'w mut ForwardWorkspace,
    ) -> Result<&'w [f32], ModelError> {
        self.forward_impl(pool, seqs, kv, ws, None)
    }

    /// [`forward`](Self::forward) with an explain pass's observer: the same arithmetic, with
    /// each layer's rows shown to `obs.hook` and optional RoPE positions (see `hook.rs`).
    pub fn forward_observed<'w>(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqChunk<'_>],
        kv: &mut KvStorage,
        ws: &'w mut ForwardWorkspace,
        obs: Observer<'_>,
    ) -> Result<&'w [f32], ModelError> {
        self.forward_impl(pool, seqs, kv, ws, Some(obs))
    }

    fn forward_impl<'w>(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqChunk<'_>],
        kv: &mut KvStorage,
        ws: &'w mut ForwardWorkspace,
        mut obs: Option<Observer<'_>>,
    ) -> Result<&'w [f32], ModelError> {
        let t_total = self.check_batch(seqs, kv)?;
        let rope_positions = obs.as_ref().and_then(|o| o.rope_positions);
        if rope_positions.is_some_and(|p| p.len() != t_total) {
            return Err(ModelError::BadBatch(
                "one RoPE position per batch row is needed".into(),
            ));
        }
        let c = &self.config;
        let (d, qd, kvd, ff) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ff);
        let ws_ = &mut *ws;
        let x = grow(&mut ws_.x, t_total * d);
        let h = grow(&mut ws_.h, t_total * d);
        let q = grow(&mut ws_.q, t_total * qd);
        let k = grow(&mut ws_.k, t_total * kvd);
        let v = grow(&mut ws_.v, t_total * kvd);
        let attn = grow(&mut ws_.attn, t_total * qd);
        let o = grow(&mut ws_.o, t_total * d);
        let gate = grow(&mut ws_.gate, t_total * ff);
        let up = grow(&mut ws_.up, t_total * ff);
        let rd = self.rope.rot_dims();
        let cos_sin = grow(&mut ws_.cos_sin, t_total * rd);

        // Per-token bookkeeping: embedding rows, RoPE angles, attention queries.
        let emb = self.embedding.mat(&self.file);
        let mut queries = recycle(std::mem::take(&mut ws_.queries));
        queries.reserve(t_total);
        let mut row = 0;
        for s in seqs {
            for (i, &tok) in s.tokens.iter().enumerate() {
                let pos = s.start_pos + i;
                emb.dequantize_row(tok as usize, &mut x[row * d..(row + 1) * d]);
                let rope_pos = rope_positions.map_or(pos, |p| p[row]);
                self.rope
                    .cos_sin(rope_pos, &mut cos_sin[row * rd..(row + 1) * rd]);
                let prompt = s.prompt_len >= 2 && pos < s.prompt_len;
                queries.push(AttnQuery {
                    n_ctx: pos + 1,
                    block_table: s.block_table,
                    prompt,
                });
                row += 1;
            }
        }

        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let geo = kv.geometry();
        for (li, b) in self.blocks.iter().enumerate() {
            // The previous layer's FFN output joins the residual stream in the same pass as
            // this layer's norm, which also quantizes its rows for Q, K and V (all three read
            // the same input: one dispatch for them).
            let qkv = [
                b.wq.mat(&self.file),
                b.wk.mat(&self.file),
                b.wv.mat(&self.file),
            ];
            let input = if li == 0 {
                fused::rms_norm_rows(pool, x, &b.attn_norm, c.rms_eps, h, &qkv[0], &mut ws_.mm)
            } else {
                fused::add_rms_norm_rows(
                    pool,
                    x,
                    o,
                    &b.attn_norm,
                    c.rms_eps,
                    h,
                    &qkv[0],
                    &mut ws_.mm,
                )
            };
            if let Some(o) = obs.as_mut() {
                o.hook.residual(li, x);
            }
            matmul_quantized(pool, &qkv, input, &mut [&mut q[..], &mut k[..], &mut v[..]]);
            add_bias_rows(q, b.bq.as_ref());
            add_bias_rows(k, b.bk.as_ref());
            add_bias_rows(v, b.bv.as_ref());
            if let Some(w) = &b.q_norm {
                rms_norm_heads_inplace(q, c.head_dim, w, c.rms_eps);
            }
            if let Some(w) = &b.k_norm {
                rms_norm_heads_inplace(k, c.head_dim, w, c.rms_eps);
            }
            // RoPE and the cache writes, token by token over the pool.
            let (k_store, v_store) = kv.layer_mut(li);
            store_step(
                pool,
                &geo,
                &queries,
                q,
                k,
                v,
                k_store,
                v_store,
                &mut ws_.slots,
                |t, q_row, k_row| {
                    let cs = &cos_sin[t * rd..(t + 1) * rd];
                    self.rope.apply(q_row, c.head_dim, cs);
                    self.rope.apply(k_row, c.head_dim, cs);
                },
            );
            let (k_layer, v_layer) = kv.layer(li);
            paged_attention(
                pool,
                self.attention,
                geo,
                &queries,
                q,
                k_layer,
                v_layer,
                scale,
                &mut ws_.attn_scratch,
                attn,
            );
            if let Some(ob) = obs.as_mut() {
                ob.hook.attention(li, q, k, v, attn);
            }
            self.linear(pool, &b.wo, attn, t_total, o, &mut ws_.mm);
            if let Some(ob) = obs.as_mut() {
                ob.hook.attn_out(li, o);
            }
            let gate_up = [b.w_gate.mat(&self.file), b.w_up.mat(&self.file)];
            let input = fused::add_rms_norm_rows(
                pool,
                x,
                o,
                &b.ffn_norm,
                c.rms_eps,
                h,
                &gate_up[0],
                &mut ws_.mm,
            );
            matmul_quantized(pool, &gate_up, input, &mut [&mut gate[..], &mut up[..]]);
            let down = b.w_down.mat(&self.file);
            let input = fused::swiglu_rows(pool, gate, up, c.d_ff, &down, &mut ws_.mm);
            matmul_quantized(pool, &[down], input, &mut [&mut o[..]]);
            if let Some(ob) = obs.as_mut() {
                ob.hook.mlp_out(li, o);
            }
        }
        if !self.blocks.is_empty() {
            add_inplace(x, o);
        }
        if let Some(ob) = obs.as_mut() {
            ob.hook.residual(self.blocks.len(), x);
        }

        ws_.queries = recycle(queries);

        // Final norm and head, only for the rows that were asked for.
        let mut n_sel = 0;
        let mut first = 0;
        for s in seqs {
            let rows = match s.logits {
                LogitsWanted::None => 0..0,
                LogitsWanted::Last => s.tokens.len() - 1..s.tokens.len(),
                LogitsWanted::All => 0..s.tokens.len(),
            };
            for r in rows {
                let src = (first + r) * d;
                let dst = grow(&mut ws_.selected, (n_sel + 1) * d);
                rms_norm(
                    &x[src..src + d],
                    &self.output_norm,
                    c.rms_eps,
                    &mut dst[n_sel * d..],
                );
                n_sel += 1;
            }
            first += s.tokens.len();
        }
        let logits = grow(&mut ws_.logits, n_sel * c.vocab_size);
        if n_sel > 0 {
            matmul(
                pool,
                &self.output.mat(&self.file),
                &ws_.selected[..n_sel * d],
                n_sel,
                logits,
                &mut ws_.mm,
            );
        }
        Ok(&ws.logits[..n_sel * c.vocab_size])
    }
}
