//! An explanation as the engine thread runs it: a series of forward passes, the first over
//! the whole text with the probes (lens, attribution, attention), then the occlusion
//! variants a few at a time, each pass small enough to slot between generation steps.
//!
//! Scores are reduced as each pass ends (a logits row becomes a logprob or two), so a job
//! holds at most one pass's logits at a time.

use lumen_kernels::ThreadPool;
use lumen_models::{
    DlaProbe, DlaTerm, ForwardWorkspace, LlamaModel, PassCache, Probe, TeacherForced,
};

use super::{OcclusionMode, ValidExplain};
use crate::error::EngineError;
use crate::sampler::{log_softmax_top_n, logsumexp};

/// Tokens one occlusion pass runs at most (a sequence longer than this runs alone): about a
/// generation step's prefill budget, so a pass between steps delays streams little.
const UNIT_TOKENS: usize = 256;

/// Occlusion's scores.
#[derive(Clone, Debug, PartialEq)]
pub struct OcclusionOut {
    /// Each span's prompt token indices.
    pub spans: Vec<Vec<usize>>,
    /// `[completion token][span]`: how much the token's logprob drops without the span.
    pub delta: Vec<Vec<f32>>,
    /// `[completion token][span]`: the drop of logprob(token) − logprob(contrast).
    pub contrast_delta: Option<Vec<Vec<f32>>>,
}

/// One lens cell.
#[derive(Clone, Debug, PartialEq)]
pub struct LensLayer {
    /// 0: the embeddings; `n_layers`: the last block's output (the served distribution).
    pub layer: usize,
    /// Entropy of the cell's distribution, in nats.
    pub entropy: f32,
    /// Logprob of the token that follows the position (none at the text's end).
    pub target_logprob: Option<f32>,
    /// The most likely tokens with their logprobs.
    pub top: Vec<(u32, f32)>,
}

/// The lens at one position.
#[derive(Clone, Debug, PartialEq)]
pub struct LensOut {
    /// Token index in prompt + completion.
    pub position: usize,
    /// One cell per layer.
    pub layers: Vec<LensLayer>,
}

/// Direct logit attribution.
#[derive(Clone, Debug, PartialEq)]
pub struct DlaOut {
    /// Token index in prompt + completion.
    pub position: usize,
    /// The token attributed.
    pub target: u32,
    /// The linearised logit the terms sum to.
    pub final_logit: f64,
    /// The logit as served.
    pub served_logit: f32,
    /// The terms.
    pub terms: Vec<DlaTerm>,
}

/// One key of an attention row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionKey {
    /// Key position.
    pub pos: usize,
    /// Attention weight.
    pub weight: f32,
    /// Weight times the key's value norm (what ranks the keys).
    pub weighted_norm: f32,
}

/// One block's attention from one target.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionLayer {
    /// Block index.
    pub layer: usize,
    /// The head (`None`: the mean over heads).
    pub head: Option<usize>,
    /// The top keys.
    pub keys: Vec<AttentionKey>,
}

/// The attention summary of one target position.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionOut {
    /// Target position.
    pub target: usize,
    /// Per block (and head).
    pub layers: Vec<AttentionLayer>,
}

/// Everything an explanation found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExplainOutput {
    /// The completion explained.
    pub completion: Vec<u32>,
    /// The completion's token logprobs, teacher-forced.
    pub baseline_logprob: Vec<f32>,
    /// Occlusion, when asked for.
    pub occlusion: Option<OcclusionOut>,
    /// Logit lens, when asked for.
    pub logit_lens: Vec<LensOut>,
    /// Direct logit attribution, when asked for.
    pub dla: Option<DlaOut>,
    /// Attention summary, when asked for.
    pub attention: Vec<AttentionOut>,
    /// Forward passes run.
    pub forward_passes: usize,
    /// Tokens those passes ran.
    pub forward_tokens: usize,
    /// Things the client should know.
    pub warnings: Vec<String>,
}

/// A validated explanation with its completion, run pass by pass.
pub struct ExplainJob {
    v: ValidExplain,
    tokens: Vec<u32>,
    started: bool,
    next_span: usize,
    base: Vec<(f32, f32)>,
    /// The baseline pass's cache: each occlusion variant starts where it departs from it.
    prefix: Option<PassCache>,
    variants: Vec<Vec<(f32, f32)>>,
    out: ExplainOutput,
}

/// One occlusion variant: the prompt without a span, then the completion.
struct Variant {
    toks: Vec<u32>,
    /// Each token's position in the whole text (the RoPE positions `mask` keeps).
    pos: Vec<usize>,
    n_kept: usize,
}

impl Variant {
    fn teacher(&self, mask: bool) -> TeacherForced<'_> {
        TeacherForced {
            tokens: &self.toks,
            rope_positions: mask.then_some(self.pos.as_slice()),
            prompt_len: self.n_kept,
            logits_from: self.n_kept - 1,
        }
    }
}

/// Logprob of `t` and of `contrast` in a logits row.
fn row_logprobs(row: &[f32], t: u32, contrast: Option<u32>) -> (f32, f32) {
    let lse = logsumexp(row);
    let lp = |id: u32| row.get(id as usize).map_or(f32::NEG_INFINITY, |&l| l - lse);
    (lp(t), contrast.map_or(0.0, lp))
}

fn entropy(row: &[f32]) -> f32 {
    let lse = f64::from(logsumexp(row));
    let mut h = 0.0f64;
    for &l in row {
        if l.is_finite() {
            let lp = f64::from(l) - lse;
            h -= lp.exp() * lp;
        }
    }
    h.max(0.0) as f32
}

impl ExplainJob {
    pub(super) fn new(v: ValidExplain, completion: Vec<u32>) -> Self {
        let mut tokens = v.prompt.clone();
        tokens.extend_from_slice(&completion);
        let out = ExplainOutput {
            completion,
            warnings: v.warnings.clone(),
            ..ExplainOutput::default()
        };
        ExplainJob {
            v,
            tokens,
            started: false,
            next_span: 0,
            base: Vec::new(),
            prefix: None,
            variants: Vec::new(),
            out,
        }
    }

    fn n_prompt(&self) -> usize {
        self.v.prompt.len()
    }

    fn n_completion(&self) -> usize {
        self.out.completion.len()
    }

    /// Tokens the passes run so far.
    pub fn forward_tokens(&self) -> usize {
        self.out.forward_tokens
    }

    /// Whether every pass has run.
    pub fn is_done(&self) -> bool {
        self.started && (!self.v.occlusion || self.next_span == self.v.spans.len())
    }

    /// Tokens the next pass runs (to decide when it fits).
    pub fn next_pass_tokens(&self) -> usize {
        if !self.started {
            self.tokens.len()
        } else {
            UNIT_TOKENS.min(self.tokens.len() * (self.v.spans.len() - self.next_span))
        }
    }

    /// Runs the next forward pass.
    pub fn step(
        &mut self,
        model: &LlamaModel,
        pool: &ThreadPool,
        ws: &mut ForwardWorkspace,
    ) -> Result<(), EngineError> {
        if !self.started {
            self.baseline(model, pool, ws)?;
            self.started = true;
        } else if self.next_span < self.v.spans.len() {
            self.occlusion_pass(model, pool, ws)?;
        }
        Ok(())
    }

    /// Positions the lens looks at.
    fn lens_positions(&self) -> Vec<usize> {
        let Some((given, _)) = &self.v.lens else {
            return Vec::new();
        };
        let total = self.tokens.len();
        match given {
            Some(p) => p.iter().copied().filter(|&p| p < total).collect(),
            None => {
                let per = super::MAX_LENS_CELLS / (self.v.model.n_layers + 1);
                let first = self.n_prompt() - 1;
                (first..first + self.n_completion().min(per)).collect()
            }
        }
    }

    fn baseline(
        &mut self,
        model: &LlamaModel,
        pool: &ThreadPool,
        ws: &mut ForwardWorkspace,
    ) -> Result<(), EngineError> {
        let (p, c, total) = (self.n_prompt(), self.n_completion(), self.tokens.len());
        let lens = self.lens_positions();
        let given_lens = self
            .v
            .lens
            .as_ref()
            .and_then(|l| l.0.as_ref())
            .map_or(0, Vec::len);
        if given_lens > lens.len() {
            self.out
                .warnings
                .push("lens positions past the generated completion were left out".into());
        }
        let dla = self.v.dla.map(|(pos, target)| {
            let position = pos.unwrap_or(p - 1).min(total - 1);
            DlaProbe {
                position,
                target: target.or_else(|| self.tokens.get(position + 1).copied()),
            }
        });
        let targets: Vec<usize> = match &self.v.attention {
            None => Vec::new(),
            Some(a) => a
                .targets
                .clone()
                .unwrap_or_else(|| vec![p - 1])
                .into_iter()
                .filter(|&t| t < total)
                .collect(),
        };
        let probe = Probe {
            lens: lens.clone(),
            dla,
            attention: targets.clone(),
        };
        let seq = TeacherForced {
            tokens: &self.tokens,
            rope_positions: None,
            prompt_len: p,
            logits_from: p - 1,
        };
        let mut pass = model.explain_pass(pool, &[seq], &probe, ws)?;
        self.out.forward_passes += 1;
        self.out.forward_tokens += total;
        // Only occlusion runs variants of the text; nothing else needs the cache kept.
        self.prefix = if self.v.occlusion {
            pass.cache.take()
        } else {
            None
        };
        let vocab = model.config().vocab_size;
        let contrast = self.v.contrast;
        self.base = (0..c)
            .map(|j| {
                let row = &pass.logits[j * vocab..(j + 1) * vocab];
                row_logprobs(row, self.out.completion[j], contrast)
            })
            .collect();
        self.out.baseline_logprob = self.base.iter().map(|b| b.0).collect();
        if let Some((_, k)) = self.v.lens {
            for (&position, rows) in lens.iter().zip(&pass.lens) {
                let next = self.tokens.get(position + 1).copied();
                let layers = rows
                    .chunks_exact(vocab)
                    .enumerate()
                    .map(|(layer, row)| LensLayer {
                        layer,
                        entropy: entropy(row),
                        target_logprob: next.map(|t| row_logprobs(row, t, None).0),
                        top: log_softmax_top_n(row, k),
                    })
                    .collect();
                self.out.logit_lens.push(LensOut { position, layers });
            }
        }
        if let (Some(probe), Some(terms)) = (dla, pass.dla) {
            self.out.dla = Some(DlaOut {
                position: probe.position,
                target: terms.target,
                final_logit: terms.final_logit,
                served_logit: terms.served_logit,
                terms: terms.terms,
            });
        }
        if let Some(a) = &self.v.attention {
            let (heads, k) = (&a.heads, &a.top_k);
            let group = model.config().n_heads / model.config().n_kv_heads.max(1);
            for (&target, rows) in targets.iter().zip(&pass.attention) {
                let mut layers = Vec::new();
                for (layer, row) in rows.iter().enumerate() {
                    let pick: Vec<Option<usize>> = match heads {
                        None => vec![None],
                        Some(h) => h.iter().map(|&h| Some(h)).collect(),
                    };
                    for head in pick {
                        let chosen: Vec<usize> = match head {
                            None => (0..row.probs.len()).collect(),
                            Some(h) => vec![h],
                        };
                        let n = chosen.len() as f32;
                        let mut keys: Vec<AttentionKey> = (0..=target)
                            .map(|pos| {
                                let mut weight = 0.0f32;
                                let mut weighted_norm = 0.0f32;
                                for &h in &chosen {
                                    let w = row.probs[h][pos];
                                    weight += w / n;
                                    weighted_norm += w * row.value_norms[h / group][pos] / n;
                                }
                                AttentionKey {
                                    pos,
                                    weight,
                                    weighted_norm,
                                }
                            })
                            .collect();
                        keys.sort_by(|a, b| {
                            b.weighted_norm
                                .total_cmp(&a.weighted_norm)
                                .then(a.pos.cmp(&b.pos))
                        });
                        keys.truncate(*k);
                        layers.push(AttentionLayer { layer, head, keys });
                    }
                }
                self.out.attention.push(AttentionOut { target, layers });
            }
        }
        Ok(())
    }

    fn occlusion_pass(
        &mut self,
        model: &LlamaModel,
        pool: &ThreadPool,
        ws: &mut ForwardWorkspace,
    ) -> Result<(), EngineError> {
        let (p, c) = (self.n_prompt(), self.n_completion());
        // The last completion token is never input: no row after it is scored.
        let tail = &self.out.completion[..c - 1];
        let mask = self.v.mode == OcclusionMode::Mask;
        let prefix = self
            .prefix
            .as_ref()
            .ok_or_else(|| EngineError::Model("occlusion ran before its baseline pass".into()))?;
        let mut owned: Vec<Variant> = Vec::new();
        let mut tokens = 0;
        while self.next_span < self.v.spans.len() {
            let span = &self.v.spans[self.next_span];
            let kept: Vec<usize> = (0..p).filter(|i| span.binary_search(i).is_err()).collect();
            let mut toks: Vec<u32> = kept.iter().map(|&i| self.v.prompt[i]).collect();
            toks.extend_from_slice(tail);
            let mut pos = kept.clone();
            pos.extend(p..p + tail.len());
            let n_kept = kept.len();
            let variant = Variant { toks, pos, n_kept };
            // What this variant costs: the rows after the ones the baseline already holds.
            let len = variant.toks.len() - prefix.reusable(&variant.teacher(mask));
            if !owned.is_empty() && tokens + len > UNIT_TOKENS {
                break;
            }
            owned.push(variant);
            tokens += len;
            self.next_span += 1;
        }
        let seqs: Vec<TeacherForced<'_>> = owned.iter().map(|v| v.teacher(mask)).collect();
        let pass = model.explain_pass_shared(pool, &seqs, prefix, ws)?;
        self.out.forward_passes += 1;
        self.out.forward_tokens += tokens;
        let vocab = model.config().vocab_size;
        for rows in pass.logits.chunks_exact(c * vocab).take(owned.len()) {
            let scores = (0..c)
                .map(|j| {
                    row_logprobs(
                        &rows[j * vocab..(j + 1) * vocab],
                        self.out.completion[j],
                        self.v.contrast,
                    )
                })
                .collect();
            self.variants.push(scores);
        }
        Ok(())
    }

    /// The findings, once [`is_done`](Self::is_done).
    pub fn finish(mut self) -> ExplainOutput {
        if self.v.occlusion {
            let c = self.n_completion();
            let delta = (0..c)
                .map(|j| {
                    self.variants
                        .iter()
                        .map(|v| self.base[j].0 - v[j].0)
                        .collect()
                })
                .collect();
            let contrast_delta = self.v.contrast.map(|_| {
                (0..c)
                    .map(|j| {
                        let b = self.base[j].0 - self.base[j].1;
                        self.variants
                            .iter()
                            .map(|v| b - (v[j].0 - v[j].1))
                            .collect()
                    })
                    .collect()
            });
            self.out.occlusion = Some(OcclusionOut {
                spans: self.v.spans.clone(),
                delta,
                contrast_delta,
            });
        }
        self.out
    }
}
