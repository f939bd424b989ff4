//! The typed body `POST /v1/explain` answers with (field names fixed by the issue that
//! introduced the endpoint; `docs/explain.md` explains each).

use lumen_engine::explain::DlaPart;
use lumen_engine::explain::ExplainOutput;
use lumen_engine::Tokenizer;
use serde::Serialize;

/// One token of the explained text.
#[derive(Serialize, Debug)]
pub struct TokenOut {
    /// Token id.
    pub id: u32,
    /// Its text (lossy UTF-8 of its bytes).
    pub text: String,
    /// Byte offset in the concatenation of every token's bytes (prompt, then completion).
    pub offset: usize,
    /// Never occluded (chat template, BOS).
    pub protected: bool,
}

/// `tokens`.
#[derive(Serialize, Debug)]
pub struct TokensOut {
    /// The prompt's tokens.
    pub prompt: Vec<TokenOut>,
    /// The completion's tokens.
    pub completion: Vec<TokenOut>,
}

/// One occluded span.
#[derive(Serialize, Debug)]
pub struct SpanOut {
    /// First prompt token index.
    pub start: usize,
    /// One past the last prompt token index.
    pub end: usize,
    /// The span's text.
    pub text: String,
}

/// `occlusion`.
#[derive(Serialize, Debug)]
pub struct OcclusionJson {
    /// `mask` or `delete`.
    pub mode: &'static str,
    /// The spans, in prompt order.
    pub spans: Vec<SpanOut>,
    /// Per completion token, its logprob with nothing occluded.
    pub baseline_logprob: Vec<f32>,
    /// `[completion token][span]`: logprob drop when the span is occluded.
    pub delta: Vec<Vec<f32>>,
    /// `[completion token][span]`: drop of logprob(token) − logprob(contrast), when asked.
    pub contrast_delta: Option<Vec<Vec<f32>>>,
}

/// A token with a logprob.
#[derive(Serialize, Debug)]
pub struct TopOut {
    /// Token id.
    pub id: u32,
    /// Its text.
    pub text: String,
    /// Its logprob.
    pub logprob: f32,
}

/// One lens cell.
#[derive(Serialize, Debug)]
pub struct LensLayerOut {
    /// 0: embeddings; the last: the model's output.
    pub layer: usize,
    /// Entropy in nats.
    pub entropy: f32,
    /// Logprob of the next token of the text (null at its end).
    pub target_logprob: Option<f32>,
    /// Most likely tokens.
    pub top: Vec<TopOut>,
}

/// The lens at one position.
#[derive(Serialize, Debug)]
pub struct LensOutJson {
    /// Token index (prompt then completion).
    pub position: usize,
    /// One cell per layer.
    pub layers: Vec<LensLayerOut>,
}

/// One DLA term.
#[derive(Serialize, Debug)]
pub struct TermOut {
    /// Block (0 for the embedding).
    pub layer: usize,
    /// `attn`, `mlp` or `embed`.
    pub part: &'static str,
    /// The head; null for the MLP, the embedding and the attention left unsplit.
    pub head: Option<usize>,
    /// Contribution to the logit.
    pub value: f64,
}

/// `dla`.
#[derive(Serialize, Debug)]
pub struct DlaJson {
    /// Token index.
    pub position: usize,
    /// Token attributed.
    pub target: u32,
    /// Its text.
    pub target_text: String,
    /// The linearised logit the terms sum to.
    pub final_logit: f64,
    /// The logit as served (differs by the head's activation quantization).
    pub served_logit: f32,
    /// The terms.
    pub terms: Vec<TermOut>,
}

/// One key.
#[derive(Serialize, Debug)]
pub struct KeyOut {
    /// Key position.
    pub pos: usize,
    /// Attention weight.
    pub weight: f32,
    /// Weight times value norm (the ranking).
    pub weighted_norm: f32,
}

/// One block's keys.
#[derive(Serialize, Debug)]
pub struct AttnLayerOut {
    /// Block.
    pub layer: usize,
    /// Head (absent: mean over heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<usize>,
    /// Top keys.
    pub keys: Vec<KeyOut>,
}

/// One target's attention.
#[derive(Serialize, Debug)]
pub struct AttnOut {
    /// Target position.
    pub target: usize,
    /// Per block.
    pub layers: Vec<AttnLayerOut>,
}

/// `usage`.
#[derive(Serialize, Debug)]
pub struct ExplainUsage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Completion tokens (generated ones included).
    pub completion_tokens: usize,
    /// Tokens generation ran to produce the completion (0 when it was given).
    pub generated_tokens: usize,
    /// Forward passes of the explanation.
    pub forward_passes: usize,
    /// Tokens those passes ran.
    pub forward_tokens: usize,
}

/// The whole answer.
#[derive(Serialize, Debug)]
pub struct ExplainResponse {
    /// `explanation`.
    pub object: &'static str,
    /// Model name.
    pub model: String,
    /// The completion's text.
    pub completion: String,
    /// The tokens.
    pub tokens: TokensOut,
    /// Occlusion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occlusion: Option<OcclusionJson>,
    /// Logit lens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logit_lens: Option<Vec<LensOutJson>>,
    /// Direct logit attribution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dla: Option<DlaJson>,
    /// Attention summary (a diagnostic, not an attribution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<Vec<AttnOut>>,
    /// Cost.
    pub usage: ExplainUsage,
    /// Things to know about the numbers.
    pub warnings: Vec<String>,
}

fn text(tok: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(tok.token_bytes(id).unwrap_or(&[])).into_owned()
}

/// What the builder needs besides the engine's findings.
pub struct Context<'a> {
    /// The tokenizer.
    pub tok: &'a Tokenizer,
    /// Model name.
    pub model: String,
    /// Prompt tokens.
    pub prompt: &'a [u32],
    /// Per prompt token: byte offset.
    pub offsets: &'a [usize],
    /// Per prompt token: protected.
    pub protected: &'a [bool],
    /// `mask` or `delete`.
    pub mode: &'static str,
    /// Which sections were asked for.
    pub asked: [bool; 4],
    /// Tokens generated for the completion.
    pub generated: usize,
}

/// Builds the answer.
pub fn build(ctx: Context<'_>, out: ExplainOutput) -> ExplainResponse {
    let tok = ctx.tok;
    let prompt: Vec<TokenOut> = ctx
        .prompt
        .iter()
        .zip(ctx.offsets)
        .zip(ctx.protected)
        .map(|((&id, &offset), &protected)| TokenOut {
            id,
            text: text(tok, id),
            offset,
            protected,
        })
        .collect();
    let mut at = prompt.last().map_or(0, |t| {
        t.offset + tok.token_bytes(t.id).map_or(0, <[u8]>::len)
    });
    let completion: Vec<TokenOut> = out
        .completion
        .iter()
        .map(|&id| {
            let t = TokenOut {
                id,
                text: text(tok, id),
                offset: at,
                protected: false,
            };
            at += tok.token_bytes(id).map_or(0, <[u8]>::len);
            t
        })
        .collect();
    let completion_text = tok.decode(&out.completion, false).unwrap_or_default();
    let occlusion = out.occlusion.map(|o| OcclusionJson {
        mode: ctx.mode,
        spans: o
            .spans
            .iter()
            .map(|s| {
                let (start, end) = (s[0], s[s.len() - 1] + 1);
                SpanOut {
                    start,
                    end,
                    text: s.iter().map(|&i| text(tok, ctx.prompt[i])).collect(),
                }
            })
            .collect(),
        baseline_logprob: out.baseline_logprob.clone(),
        delta: o.delta,
        contrast_delta: o.contrast_delta,
    });
    let logit_lens = ctx.asked[1].then(|| {
        out.logit_lens
            .into_iter()
            .map(|l| LensOutJson {
                position: l.position,
                layers: l
                    .layers
                    .into_iter()
                    .map(|c| LensLayerOut {
                        layer: c.layer,
                        entropy: c.entropy,
                        target_logprob: c.target_logprob,
                        top: c
                            .top
                            .into_iter()
                            .map(|(id, logprob)| TopOut {
                                id,
                                text: text(tok, id),
                                logprob,
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    });
    let dla = out.dla.map(|d| DlaJson {
        position: d.position,
        target: d.target,
        target_text: text(tok, d.target),
        final_logit: d.final_logit,
        served_logit: d.served_logit,
        terms: d
            .terms
            .into_iter()
            .map(|t| TermOut {
                layer: t.layer,
                part: match t.part {
                    DlaPart::Embed => "embed",
                    DlaPart::Attn => "attn",
                    DlaPart::Mlp => "mlp",
                },
                head: t.head,
                value: t.value,
            })
            .collect(),
    });
    let attention = ctx.asked[3].then(|| {
        out.attention
            .into_iter()
            .map(|a| AttnOut {
                target: a.target,
                layers: a
                    .layers
                    .into_iter()
                    .map(|l| AttnLayerOut {
                        layer: l.layer,
                        head: l.head,
                        keys: l
                            .keys
                            .into_iter()
                            .map(|k| KeyOut {
                                pos: k.pos,
                                weight: k.weight,
                                weighted_norm: k.weighted_norm,
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    });
    let mut warnings = out.warnings;
    if attention.is_some() {
        warnings.push(
            "attention weights are a diagnostic of where the model looked, not an attribution of why it answered"
                .into(),
        );
    }
    ExplainResponse {
        object: "explanation",
        model: ctx.model,
        completion: completion_text,
        usage: ExplainUsage {
            prompt_tokens: prompt.len(),
            completion_tokens: completion.len(),
            generated_tokens: ctx.generated,
            forward_passes: out.forward_passes,
            forward_tokens: out.forward_tokens,
        },
        tokens: TokensOut { prompt, completion },
        occlusion,
        logit_lens,
        dla,
        attention,
        warnings,
    }
}
