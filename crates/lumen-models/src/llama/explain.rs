//! The explain pass: teacher-forced sequences through the ordinary forward pass, with what
//! interpretability needs captured on the way (see `hook.rs` for why it is the same pass).
//!
//! One call runs a batch of sequences in a KV cache of its own, sized for them and dropped
//! after, so explain work never takes blocks from the engine's pool. Each sequence asks for
//! logits only for the rows that predict the tokens being explained (`logits_from` on): its
//! earlier rows run as a chunk that returns none, so a 500-token prompt does not pay for 500
//! vocabulary-wide rows. Sequence 0 may carry a [`Probe`]:
//!
//! - **logit lens**: the residual stream entering each block (and leaving the last) at chosen
//!   positions, put through the final norm and the unembedding with the very kernels the
//!   forward pass ends with, so the last layer's row *is* the served logits;
//! - **direct logit attribution**: the final residual is the sum of the embedding, each
//!   block's attention output and each block's MLP output. The final RMSNorm is not linear;
//!   it is linearised at the actual residual, its scale `1/rms(x)` computed on that residual
//!   and held fixed, so a component `c` contributes `Σ_j w_j g_j c_j / rms(x)` (`w` the
//!   target's unembedding row, dequantized; `g` the norm's weight) and the terms add up to
//!   `final_logit`, that linear function of the residual. The served logit differs from it by
//!   the head matmul's activation quantization (reported too, as `served_logit`). Attention is
//!   split by head by running the output projection on each head's slice alone (the other
//!   heads zeroed); what that split does not account for (the projection's activation
//!   quantization when a quantization block spans heads) is kept as a per-layer term with no
//!   head, so the sum stays exact;
//! - **attention weights**: softmax of the post-RoPE query against the cached (f16) keys of
//!   every earlier position, per head, with each key's value norm. Recomputed from the rows
//!   the pass produced in plain f64, so they are a faithful diagnostic of the pattern but not
//!   the kernel's own rounding.

use half::f16;
use lumen_kernels::ops::rms_norm;
use lumen_kernels::{matmul, MatmulScratch, ThreadPool};

use super::explain_prefix::PassCache;
use super::forward::{ForwardWorkspace, LogitsWanted, SeqChunk};
use super::hook::{ForwardHook, Observer};
use super::model::LlamaModel;
use crate::kv::KvStorage;
use crate::ModelError;

/// Token slots per block of an explain pass's own cache.
const BLOCK: usize = 16;

/// One teacher-forced sequence of an explain pass.
#[derive(Clone, Copy, Debug)]
pub struct TeacherForced<'a> {
    /// Every token, prompt and completion.
    pub tokens: &'a [u32],
    /// Each token's RoPE position; `None`: `0..len`. Gaps are how `mask` occlusion keeps
    /// positions while leaving a span out.
    pub rope_positions: Option<&'a [usize]>,
    /// Tokens below this index are prompt (the exact layout's arithmetic follows it).
    pub prompt_len: usize,
    /// Rows from this index on return logits (row `i` predicts token `i + 1`).
    pub logits_from: usize,
}

/// Direct logit attribution's question: the logit of `target` at `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DlaProbe {
    /// Row (token index) whose output is attributed.
    pub position: usize,
    /// Token whose logit is attributed; `None`: the most likely one there.
    pub target: Option<u32>,
}

/// What to capture of sequence 0.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    /// Logit-lens positions.
    pub lens: Vec<usize>,
    /// Direct logit attribution.
    pub dla: Option<DlaProbe>,
    /// Positions whose attention weights are wanted.
    pub attention: Vec<usize>,
}

/// Which part of a block a DLA term comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlaPart {
    /// The token embedding (layer 0).
    Embed,
    /// A block's attention output (one head, or the part no head accounts for).
    Attn,
    /// A block's MLP output.
    Mlp,
}

/// One additive term of a logit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DlaTerm {
    /// Block index (0 for the embedding).
    pub layer: usize,
    /// Which part.
    pub part: DlaPart,
    /// Attention head, for per-head terms.
    pub head: Option<usize>,
    /// Contribution to the logit.
    pub value: f64,
}

/// A logit split into its direct contributions.
#[derive(Clone, Debug, PartialEq)]
pub struct DlaTerms {
    /// The token attributed.
    pub target: u32,
    /// The linearised logit the terms sum to (see the module docs).
    pub final_logit: f64,
    /// The logit the server computes (quantized head matmul).
    pub served_logit: f32,
    /// Embedding, then per block each head's attention, the unattributed rest, the MLP.
    pub terms: Vec<DlaTerm>,
}

/// One position's attention in one block.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionRow {
    /// Per head, the weight on each key position `0..=position`.
    pub probs: Vec<Vec<f32>>,
    /// Per KV head, the norm of each key position's value.
    pub value_norms: Vec<Vec<f32>>,
}

/// What an explain pass returns.
#[derive(Clone, Debug, Default)]
pub struct PassOutput {
    /// Logits rows, `vocab_size` each: per sequence in batch order, rows `logits_from..len`.
    pub logits: Vec<f32>,
    /// Sequence 0's keys and values, for later passes over its variants (a pass that itself
    /// shared a prefix keeps none).
    pub cache: Option<PassCache>,
    /// Per lens position, per layer `0..=n_layers`, a logits row (`vocab_size` each).
    pub lens: Vec<Vec<f32>>,
    /// The attribution, when probed.
    pub dla: Option<DlaTerms>,
    /// Per attention position, per block.
    pub attention: Vec<Vec<AttentionRow>>,
}

/// The hook that keeps sequence 0's probed rows.
struct Capture {
    d: usize,
    qd: usize,
    kvd: usize,
    lens: Vec<usize>,
    /// `[lens position][layer][d]`.
    lens_resid: Vec<Vec<f32>>,
    dla: Option<usize>,
    dla_embed: Vec<f32>,
    dla_final: Vec<f32>,
    /// `[layer][d]` each.
    dla_attn: Vec<f32>,
    dla_mlp: Vec<f32>,
    /// `[layer][q_dim]`.
    dla_heads: Vec<f32>,
    attention: Vec<usize>,
    /// Rows of sequence 0 whose keys and values are kept (`0..att_rows`).
    att_rows: usize,
    /// `[layer][attention position][q_dim]`.
    att_q: Vec<f32>,
    /// `[layer][row][kv_dim]` each.
    att_k: Vec<f32>,
    att_v: Vec<f32>,
}

impl ForwardHook for Capture {
    fn residual(&mut self, _layer: usize, x: &[f32]) {
        let d = self.d;
        for (i, &p) in self.lens.iter().enumerate() {
            self.lens_resid[i].extend_from_slice(&x[p * d..(p + 1) * d]);
        }
        if let Some(p) = self.dla {
            let row = &x[p * d..(p + 1) * d];
            if self.dla_embed.is_empty() {
                self.dla_embed.extend_from_slice(row);
            } else {
                // Overwritten block by block: what remains is the last block's output.
                self.dla_final.clear();
                self.dla_final.extend_from_slice(row);
            }
        }
    }

    fn attention(&mut self, _layer: usize, q: &[f32], k: &[f32], v: &[f32], heads: &[f32]) {
        let (qd, kvd) = (self.qd, self.kvd);
        if let Some(p) = self.dla {
            self.dla_heads
                .extend_from_slice(&heads[p * qd..(p + 1) * qd]);
        }
        for &p in &self.attention {
            self.att_q.extend_from_slice(&q[p * qd..(p + 1) * qd]);
        }
        if self.att_rows > 0 {
            self.att_k.extend_from_slice(&k[..self.att_rows * kvd]);
            self.att_v.extend_from_slice(&v[..self.att_rows * kvd]);
        }
    }

    fn attn_out(&mut self, _layer: usize, o: &[f32]) {
        if let Some(p) = self.dla {
            self.dla_attn
                .extend_from_slice(&o[p * self.d..(p + 1) * self.d]);
        }
    }

    fn mlp_out(&mut self, _layer: usize, o: &[f32]) {
        if let Some(p) = self.dla {
            self.dla_mlp
                .extend_from_slice(&o[p * self.d..(p + 1) * self.d]);
        }
    }
}

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::BadBatch(msg.into())
}

fn dot(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * y).sum()
}

impl LlamaModel {
    /// Final norm and unembedding of residual rows (`d_model` each), with the kernels the
    /// forward pass ends with: a final residual gives exactly the served logits.
    pub fn head_logits(&self, pool: &ThreadPool, rows: &[f32]) -> Vec<f32> {
        let (d, vocab) = (self.config.d_model, self.config.vocab_size);
        let n = rows.len() / d;
        let mut normed = vec![0.0f32; n * d];
        for (src, dst) in rows.chunks_exact(d).zip(normed.chunks_exact_mut(d)) {
            rms_norm(src, &self.output_norm, self.config.rms_eps, dst);
        }
        let mut logits = vec![0.0f32; n * vocab];
        if n > 0 {
            let mut mm = MatmulScratch::new();
            matmul(
                pool,
                &self.output.mat(&self.file),
                &normed,
                n,
                &mut logits,
                &mut mm,
            );
        }
        logits
    }

    /// Runs `seqs` teacher-forced through the forward pass in a cache of their own, capturing
    /// what `probe` asks of sequence 0; the output keeps sequence 0's cache
    /// ([`PassOutput::cache`]) for [`explain_pass_shared`](Self::explain_pass_shared).
    pub fn explain_pass(
        &self,
        pool: &ThreadPool,
        seqs: &[TeacherForced<'_>],
        probe: &Probe,
        ws: &mut ForwardWorkspace,
    ) -> Result<PassOutput, ModelError> {
        self.pass(pool, seqs, probe, None, ws)
    }

    /// Like [`explain_pass`](Self::explain_pass) without probes, each sequence starting from
    /// the rows it shares with `prefix` ([`PassCache::reusable`]) instead of recomputing
    /// them: the logits are the same, the work is what follows the shared rows.
    pub fn explain_pass_shared(
        &self,
        pool: &ThreadPool,
        seqs: &[TeacherForced<'_>],
        prefix: &PassCache,
        ws: &mut ForwardWorkspace,
    ) -> Result<PassOutput, ModelError> {
        self.pass(pool, seqs, &Probe::default(), Some(prefix), ws)
    }

    fn pass(
        &self,
        pool: &ThreadPool,
        seqs: &[TeacherForced<'_>],
        probe: &Probe,
        prefix: Option<&PassCache>,
        ws: &mut ForwardWorkspace,
    ) -> Result<PassOutput, ModelError> {
        let c = &self.config;
        let geo = self.kv_geometry(BLOCK);
        if prefix.is_some_and(|p| p.block != BLOCK || p.kv.geometry() != geo) {
            return Err(bad("a cache from another model"));
        }
        let first = seqs.first().ok_or_else(|| bad("no sequences"))?;
        let len0 = first.tokens.len();
        let probed = probe.lens.iter().chain(&probe.attention);
        if probed
            .chain(probe.dla.as_ref().map(|p| &p.position))
            .any(|&p| p >= len0)
        {
            return Err(bad("a probed position is past the sequence"));
        }
        if probe
            .dla
            .and_then(|p| p.target)
            .is_some_and(|t| t as usize >= c.vocab_size)
        {
            return Err(bad("the attributed token is outside the vocabulary"));
        }
        // Rows each sequence takes from `prefix` (whole blocks, the cache's first blocks).
        let mut skip = Vec::with_capacity(seqs.len());
        for s in seqs {
            if s.tokens.is_empty() || s.logits_from > s.tokens.len() {
                return Err(bad("an empty sequence or logits past its end"));
            }
            if s.rope_positions.is_some_and(|p| p.len() != s.tokens.len()) {
                return Err(bad("one RoPE position per token is needed"));
            }
            skip.push(prefix.map_or(0, |p| p.reusable(s)));
        }
        let shared_blocks = skip.iter().max().map_or(0, |&n| n / BLOCK);
        let mut n_blocks = shared_blocks;
        let mut tables = Vec::with_capacity(seqs.len());
        let mut rope = Vec::new();
        for (s, &skip) in seqs.iter().zip(&skip) {
            let blocks = s.tokens.len().div_ceil(BLOCK) - skip / BLOCK;
            let mut table: Vec<u32> = (0..(skip / BLOCK) as u32).collect();
            table.extend(n_blocks as u32..(n_blocks + blocks) as u32);
            tables.push(table);
            n_blocks += blocks;
            match s.rope_positions {
                Some(p) => rope.extend_from_slice(&p[skip..]),
                None => rope.extend(skip..s.tokens.len()),
            }
        }
        let mut kv = KvStorage::new(geo, c.n_layers, n_blocks);
        if let Some(p) = prefix {
            kv.copy_blocks_from(&p.kv, shared_blocks);
        }
        let mut chunks = Vec::with_capacity(2 * seqs.len());
        for ((s, table), &skip) in seqs.iter().zip(&tables).zip(&skip) {
            let split = s.logits_from.min(s.tokens.len());
            if split > skip {
                chunks.push(SeqChunk {
                    tokens: &s.tokens[skip..split],
                    start_pos: skip,
                    block_table: table,
                    logits: LogitsWanted::None,
                    prompt_len: s.prompt_len,
                });
            }
            if split < s.tokens.len() {
                chunks.push(SeqChunk {
                    tokens: &s.tokens[split..],
                    start_pos: split,
                    block_table: table,
                    logits: LogitsWanted::All,
                    prompt_len: s.prompt_len,
                });
            }
        }
        let att_rows = probe.attention.iter().max().map_or(0, |&p| p + 1);
        let mut cap = Capture {
            d: c.d_model,
            qd: c.q_dim(),
            kvd: c.kv_dim(),
            lens: probe.lens.clone(),
            lens_resid: vec![Vec::new(); probe.lens.len()],
            dla: probe.dla.map(|p| p.position),
            dla_embed: Vec::new(),
            dla_final: Vec::new(),
            dla_attn: Vec::new(),
            dla_mlp: Vec::new(),
            dla_heads: Vec::new(),
            attention: probe.attention.clone(),
            att_rows,
            att_q: Vec::new(),
            att_k: Vec::new(),
            att_v: Vec::new(),
        };
        let logits = self
            .forward_observed(
                pool,
                &chunks,
                &mut kv,
                ws,
                Observer {
                    rope_positions: Some(&rope),
                    hook: &mut cap,
                },
            )?
            .to_vec();
        // Sequence 0's rows are blocks `0..` in order only when nothing was shared.
        let cache = prefix.is_none().then(|| PassCache {
            kv,
            tokens: first.tokens.to_vec(),
            positions: first
                .rope_positions
                .map_or_else(|| (0..len0).collect(), <[usize]>::to_vec),
            prompt_len: first.prompt_len,
            block: BLOCK,
        });
        let lens = cap
            .lens_resid
            .iter()
            .map(|rows| self.head_logits(pool, rows))
            .collect();
        let dla = probe.dla.map(|p| self.attribute(pool, &cap, p.target));
        let attention = self.attention_rows(&cap);
        Ok(PassOutput {
            logits,
            cache,
            lens,
            dla,
            attention,
        })
    }

    /// Direct logit attribution of `target` from the captured rows (module docs).
    fn attribute(&self, pool: &ThreadPool, cap: &Capture, target: Option<u32>) -> DlaTerms {
        let c = &self.config;
        let (d, qd, hd) = (c.d_model, c.q_dim(), c.head_dim);
        let xf = &cap.dla_final;
        let served = self.head_logits(pool, xf);
        let target = target.unwrap_or_else(|| {
            let mut best = 0;
            for (i, &l) in served.iter().enumerate() {
                if l > served[best] {
                    best = i;
                }
            }
            best as u32
        });
        // The final norm's scale on the actual residual, as the kernel computes it.
        let mean = (xf.iter().map(|&v| f64::from(v * v)).sum::<f64>() / d as f64) as f32;
        let scale = 1.0 / (mean + c.rms_eps).sqrt();
        let mut w = vec![0.0f32; d];
        self.output
            .mat(&self.file)
            .dequantize_row(target as usize, &mut w);
        let u: Vec<f64> = w
            .iter()
            .zip(&self.output_norm)
            .map(|(&w, &g)| f64::from(w) * f64::from(g) * f64::from(scale))
            .collect();
        let mut terms = vec![DlaTerm {
            layer: 0,
            part: DlaPart::Embed,
            head: None,
            value: dot(&cap.dla_embed, &u),
        }];
        let mut mm = MatmulScratch::new();
        let mut masked = vec![0.0f32; c.n_heads * qd];
        let mut per_head = vec![0.0f32; c.n_heads * d];
        for (li, b) in self.blocks.iter().enumerate() {
            let heads = &cap.dla_heads[li * qd..(li + 1) * qd];
            masked.fill(0.0);
            for h in 0..c.n_heads {
                let r = h * hd..(h + 1) * hd;
                masked[h * qd + r.start..h * qd + r.end].copy_from_slice(&heads[r]);
            }
            matmul(
                pool,
                &b.wo.mat(&self.file),
                &masked,
                c.n_heads,
                &mut per_head,
                &mut mm,
            );
            let whole = dot(&cap.dla_attn[li * d..(li + 1) * d], &u);
            let mut split = 0.0;
            for h in 0..c.n_heads {
                let value = dot(&per_head[h * d..(h + 1) * d], &u);
                split += value;
                terms.push(DlaTerm {
                    layer: li,
                    part: DlaPart::Attn,
                    head: Some(h),
                    value,
                });
            }
            terms.push(DlaTerm {
                layer: li,
                part: DlaPart::Attn,
                head: None,
                value: whole - split,
            });
            terms.push(DlaTerm {
                layer: li,
                part: DlaPart::Mlp,
                head: None,
                value: dot(&cap.dla_mlp[li * d..(li + 1) * d], &u),
            });
        }
        DlaTerms {
            target,
            final_logit: dot(xf, &u),
            served_logit: served[target as usize],
            terms,
        }
    }

    /// Attention weights of the probed positions, per block (module docs).
    fn attention_rows(&self, cap: &Capture) -> Vec<Vec<AttentionRow>> {
        let c = &self.config;
        let (qd, kvd, hd) = (c.q_dim(), c.kv_dim(), c.head_dim);
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let n_att = cap.attention.len();
        let f16r = |x: f32| f64::from(f16::from_f32(x).to_f32());
        let mut out = vec![Vec::with_capacity(c.n_layers); n_att];
        for li in 0..c.n_layers {
            let keys = &cap.att_k[li * cap.att_rows * kvd..(li + 1) * cap.att_rows * kvd];
            let vals = &cap.att_v[li * cap.att_rows * kvd..(li + 1) * cap.att_rows * kvd];
            for (ti, &p) in cap.attention.iter().enumerate() {
                let q = &cap.att_q[(li * n_att + ti) * qd..(li * n_att + ti + 1) * qd];
                let probs = (0..c.n_heads)
                    .map(|h| {
                        let kvh = h / group;
                        let qh = &q[h * hd..(h + 1) * hd];
                        let scores: Vec<f64> = (0..=p)
                            .map(|j| {
                                let k = &keys[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                                scale
                                    * qh.iter()
                                        .zip(k)
                                        .map(|(&a, &b)| f64::from(a) * f16r(b))
                                        .sum::<f64>()
                            })
                            .collect();
                        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                        let total: f64 = exps.iter().sum();
                        exps.iter().map(|e| (e / total) as f32).collect()
                    })
                    .collect();
                let value_norms = (0..c.n_kv_heads)
                    .map(|kvh| {
                        (0..=p)
                            .map(|j| {
                                let v = &vals[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                                v.iter().map(|&x| f16r(x).powi(2)).sum::<f64>().sqrt() as f32
                            })
                            .collect()
                    })
                    .collect();
                out[ti].push(AttentionRow { probs, value_norms });
            }
        }
        out
    }
}
