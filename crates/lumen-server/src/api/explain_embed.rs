//! `POST /v1/explain` with an embedding model and two `texts`: which spans of each text carry
//! their cosine similarity, so a search result can be explained.
//!
//! Occlusion by deletion on either side: each span of text A is removed in turn and the
//! shortened text embedded, its cosine with text B's unchanged embedding compared with the
//! full pair's (and the same for B against A). `delta` is the similarity lost without the span.
//! Deletion is the only mode: the sentence encoder has no cache in which keys could be masked,
//! and removing tokens is what a shorter document would be. All variants go to the embedding
//! engine as one request, whose passes pack them; results are bit-identical to embedding each
//! alone (the engine's batch invariance), so each delta equals what two `/v1/embeddings` calls
//! would give.

use lumen_engine::explain::{build_spans, protected_tokens, span_text, SpanSpec};
use lumen_engine::{EmbedInput, Tokenizer};
use serde::Serialize;

use super::explain::{ExplainBody, SpansField};
use super::explain_out::{SpanOut, TokenOut};
use crate::error::ServerError;
use crate::state::EmbeddingServed;

/// One side of the pair.
#[derive(Serialize, Debug)]
pub struct SideOut {
    /// The text's tokens (special tokens protected).
    pub tokens: Vec<TokenOut>,
    /// Its spans.
    pub spans: Vec<SpanOut>,
    /// Per span: the cosine similarity lost when the span is deleted.
    pub delta: Vec<f32>,
}

/// `usage`.
#[derive(Serialize, Debug)]
pub struct EmbedExplainUsage {
    /// Texts embedded (the two, then every variant).
    pub embedded_inputs: usize,
    /// Their tokens.
    pub tokens: usize,
}

/// The answer.
#[derive(Serialize, Debug)]
pub struct EmbedExplainResponse {
    /// `explanation`.
    pub object: &'static str,
    /// Model name.
    pub model: String,
    /// Cosine similarity of the two texts.
    pub similarity: f32,
    /// Per text.
    pub texts: Vec<SideOut>,
    /// Cost.
    pub usage: EmbedExplainUsage,
}

/// One text tokenized and cut into spans.
struct Side {
    ids: Vec<u32>,
    offsets: Vec<usize>,
    protected: Vec<bool>,
    spans: Vec<Vec<usize>>,
}

/// The two texts tokenized and cut into spans, with every variant to embed.
pub struct EmbedPlan {
    sides: Vec<Side>,
    /// Inputs to embed: the two texts, then each side's variants.
    pub inputs: Vec<Vec<u32>>,
}

impl EmbedPlan {
    /// Tokens of all inputs (the admission cost).
    pub fn tokens(&self) -> usize {
        self.inputs.iter().map(Vec::len).sum()
    }
}

fn spec(body: &ExplainBody) -> Result<SpanSpec, ServerError> {
    let Some(o) = &body.occlusion else {
        return Ok(SpanSpec::Word);
    };
    if o.mode.as_deref().is_some_and(|m| m != "delete") || o.contrast.is_some() {
        return Err(ServerError::param(
            "occlusion.mode",
            "embedding explanations delete spans (mode \"delete\"), with no contrast",
        ));
    }
    match &o.spans {
        None => Ok(SpanSpec::Word),
        Some(SpansField::Kind(k)) => match k.as_str() {
            "token" => Ok(SpanSpec::Token),
            "word" => Ok(SpanSpec::Word),
            "sentence" => Ok(SpanSpec::Sentence),
            other => Err(ServerError::param(
                "occlusion.spans",
                format!("spans must be token, word or sentence for two texts, not {other:?}"),
            )),
        },
        Some(SpansField::Ranges(_)) => Err(ServerError::param(
            "occlusion.spans",
            "explicit ranges are for one prompt; give token, word or sentence for two texts",
        )),
    }
}

/// Checks the request and plans the embeddings (blocking: tokenization).
pub fn plan(body: &ExplainBody, model: &EmbeddingServed) -> Result<EmbedPlan, ServerError> {
    let texts = body.texts.as_deref().unwrap_or_default();
    if texts.len() != 2 {
        return Err(ServerError::param(
            "texts",
            format!("give exactly two texts, got {}", texts.len()),
        ));
    }
    let others = [
        (body.messages.is_some(), "messages"),
        (body.prompt.is_some(), "prompt"),
        (body.completion.is_some(), "completion"),
        (body.logit_lens.is_some(), "logit_lens"),
        (body.dla.is_some(), "dla"),
        (body.attention.is_some(), "attention"),
    ];
    if let Some((_, param)) = others.iter().find(|(set, _)| *set) {
        return Err(ServerError::param(
            *param,
            "an embedding explanation takes two texts and occlusion only",
        ));
    }
    let spec = spec(body)?;
    let tok = model.handle.tokenizer();
    let mut sides = Vec::new();
    for t in texts {
        let ids = model
            .handle
            .prepare(vec![EmbedInput::Text(t.clone())], None)?
            .pop()
            .unwrap_or_default();
        let (offsets, protected) = protected_tokens(tok, &ids, None);
        let spans = build_spans(&spec, &ids, &protected, tok)?;
        sides.push(Side {
            ids,
            offsets,
            protected,
            spans,
        });
    }
    let mut inputs: Vec<Vec<u32>> = sides.iter().map(|s| s.ids.clone()).collect();
    for side in &sides {
        for span in &side.spans {
            inputs.push(
                side.ids
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| span.binary_search(i).is_err())
                    .map(|(_, &t)| t)
                    .collect(),
            );
        }
    }
    model.handle.validate(&inputs)?;
    Ok(EmbedPlan { sides, inputs })
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb).max(f64::MIN_POSITIVE)) as f32
}

fn token_text(tok: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(tok.token_bytes(id).unwrap_or(&[])).into_owned()
}

/// Embeds the plan and shapes the answer.
pub async fn run(
    model: &EmbeddingServed,
    plan: EmbedPlan,
) -> Result<EmbedExplainResponse, ServerError> {
    let usage = EmbedExplainUsage {
        embedded_inputs: plan.inputs.len(),
        tokens: plan.tokens(),
    };
    let expected = plan.inputs.len();
    let vectors = model.handle.embed(plan.inputs).await?;
    if vectors.len() != expected {
        return Err(ServerError::Internal(format!(
            "the embedding engine returned {} vectors for {expected} inputs",
            vectors.len()
        )));
    }
    let tok = model.handle.tokenizer().clone();
    let similarity = cosine(&vectors[0], &vectors[1]);
    let mut next = 2;
    let mut texts = Vec::new();
    for (
        side,
        Side {
            ids,
            offsets,
            protected,
            spans,
        },
    ) in plan.sides.into_iter().enumerate()
    {
        let other = &vectors[1 - side];
        let delta = spans
            .iter()
            .enumerate()
            .map(|(s, _)| similarity - cosine(&vectors[next + s], other))
            .collect();
        next += spans.len();
        let spans_out = spans
            .iter()
            .map(|s| SpanOut {
                start: s[0],
                end: s[s.len() - 1] + 1,
                text: span_text(&tok, &s.iter().map(|&i| ids[i]).collect::<Vec<_>>()),
            })
            .collect();
        let tokens = ids
            .iter()
            .zip(&offsets)
            .zip(&protected)
            .map(|((&id, &offset), &protected)| TokenOut {
                id,
                text: token_text(&tok, id),
                offset,
                protected,
            })
            .collect();
        texts.push(SideOut {
            tokens,
            spans: spans_out,
            delta,
        });
    }
    Ok(EmbedExplainResponse {
        object: "explanation",
        model: model.name.clone(),
        similarity,
        texts,
        usage,
    })
}
