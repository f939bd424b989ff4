//! `POST /v1/completions` (the legacy text completions API).
//!
//! A prompt may be a string, a list of strings, a list of token ids or a list of such lists;
//! each becomes its own engine request with `n` choices, numbered `prompt * n + choice`.
//! `echo` prepends the prompt to each choice; with `logprobs` the prompt's own logprobs come
//! first (`null` for its first token), which is why echo asks the engine for prompt logprobs.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lumen_engine::{TokenLogprob, Tokenizer, Usage};
use serde::Deserialize;
use serde_json::{json, Value};

use super::logprobs::{prompt_logprobs_json, CompletionLogprobs};
use super::params::{top_logprobs, GenFields};
use super::{deadline, prepare, Meta};
use crate::error::ServerError;
use crate::extract::{from_value, OpenAiJson};
use crate::gen::{submit_all, usage_json, GenEvent, Generation};
use crate::sse::{stream_response, ChunkFormat};
use crate::state::AppState;

/// The prompt field in its four shapes.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum PromptIn {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One tokenized prompt.
    Ids(Vec<i64>),
    /// Several tokenized prompts.
    IdLists(Vec<Vec<i64>>),
}

/// The completions-specific fields.
#[derive(Deserialize, Debug)]
pub struct CompletionBody {
    /// Model name.
    pub model: String,
    /// The prompt(s).
    pub prompt: PromptIn,
    /// Prepend the prompt to the output.
    pub echo: Option<bool>,
    /// Alternatives per token (0..=20); present means logprobs are returned.
    pub logprobs: Option<i64>,
    /// Must equal `n` when sent (Lumen returns every choice).
    pub best_of: Option<i64>,
}

fn ids(list: Vec<i64>, vocab: usize) -> Result<Vec<u32>, ServerError> {
    list.into_iter()
        .map(|t| {
            u32::try_from(t)
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .ok_or_else(|| {
                    ServerError::param(
                        "prompt",
                        format!("token id {t} is outside the vocabulary of {vocab} tokens"),
                    )
                })
        })
        .collect()
}

/// Tokenizes every prompt; returns (ids, text) pairs.
fn tokenize_prompts(
    prompt: PromptIn,
    tok: &Tokenizer,
) -> Result<Vec<(Vec<u32>, String)>, ServerError> {
    let vocab = tok.vocab_size();
    let texts = |v: Vec<String>| -> Result<Vec<(Vec<u32>, String)>, ServerError> {
        v.into_iter()
            .map(|t| Ok((tok.encode(&t, true, true)?, t)))
            .collect()
    };
    let lists = |v: Vec<Vec<i64>>| -> Result<Vec<(Vec<u32>, String)>, ServerError> {
        v.into_iter()
            .map(|l| {
                let ids = ids(l, vocab)?;
                let text = tok.decode(&ids, false)?;
                Ok((ids, text))
            })
            .collect()
    };
    let out = match prompt {
        PromptIn::Text(t) => texts(vec![t])?,
        PromptIn::Texts(v) => texts(v)?,
        PromptIn::Ids(v) => lists(vec![v])?,
        PromptIn::IdLists(v) => lists(v)?,
    };
    if out.is_empty() || out.iter().any(|(ids, _)| ids.is_empty()) {
        return Err(ServerError::param("prompt", "the prompt is empty"));
    }
    Ok(out)
}

/// The handler.
pub async fn completions(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<Value>,
) -> Result<Response, ServerError> {
    let arrived = Instant::now();
    let req: CompletionBody = from_value(&body)?;
    let fields: GenFields = from_value(&body)?;
    let model = state.chat_model(Some(&req.model))?;
    state.ensure_accepting()?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) => Some(top_logprobs("logprobs", Some(k))?),
    };
    let echo = req.echo.unwrap_or(false);
    let mut plan = fields.plan(&model.handle, logprobs)?;
    if let Some(b) = req.best_of {
        if b != plan.n as i64 {
            return Err(ServerError::param(
                "best_of",
                "best_of is not supported unless it equals n",
            ));
        }
    }
    let show_prompt_logprobs = plan.template.prompt_logprobs.is_some();
    if echo {
        if let Some(k) = logprobs {
            plan.template.prompt_logprobs = Some(plan.template.prompt_logprobs.unwrap_or(0).max(k));
        }
    }
    let tok = model.handle.tokenizer().clone();
    let t = tok.clone();
    let prompts = prepare(move || tokenize_prompts(req.prompt, &t)).await?;
    if prompts.len() > state.limits().max_prompts {
        return Err(ServerError::param(
            "prompt",
            format!("at most {} prompts per request", state.limits().max_prompts),
        ));
    }
    let mut requests = Vec::with_capacity(prompts.len());
    for (ids, _) in &prompts {
        requests.push(plan.request(ids.clone(), &model.handle, "prompt")?);
    }
    let streams = submit_all(&model.handle, requests)?;
    tracing::debug!(model = %model.name, prompts = prompts.len(), n = plan.n, stream = plan.stream, user = plan.user.as_deref().unwrap_or(""), "completion");
    let gen = Generation::new(
        streams,
        plan.n,
        arrived,
        deadline(&state, arrived),
        model.metrics.clone(),
    );
    let meta = Meta::new(&state, "cmpl", &model.name);
    let fmt = TextChunks {
        meta,
        tokenizer: tok,
        n: plan.n,
        echo,
        logprobs: logprobs.is_some(),
        prompts,
        show_prompt_logprobs,
        include_usage: plan.include_usage,
        sent_chars: Vec::new(),
    };
    if plan.stream {
        return Ok(stream_response(gen, fmt, plan.include_usage));
    }
    collect(gen, fmt).await
}

async fn collect(mut gen: Generation, fmt: TextChunks) -> Result<Response, ServerError> {
    let n = gen.num_choices();
    let tok = fmt.tokenizer.clone();
    let mut texts = vec![String::new(); n];
    let mut lps: Vec<CompletionLogprobs> = vec![CompletionLogprobs::default(); n];
    let mut reasons = vec!["cancelled"; n];
    let mut prompt_lps: Vec<Option<Vec<Option<TokenLogprob>>>> = vec![None; fmt.prompts.len()];
    if fmt.echo {
        for (i, text) in texts.iter_mut().enumerate() {
            text.push_str(&fmt.prompts[i / fmt.n].1);
        }
    }
    while let Some(ev) = gen.next().await? {
        match ev {
            GenEvent::PromptLogprobs { prompt, logprobs } => {
                if fmt.echo && fmt.logprobs {
                    for c in 0..fmt.n {
                        lps[prompt * fmt.n + c].push_prompt(
                            &tok,
                            &fmt.prompts[prompt].0,
                            &logprobs,
                        );
                    }
                }
                prompt_lps[prompt] = Some(logprobs);
            }
            GenEvent::Token {
                index,
                text,
                logprob,
                ..
            } => {
                if let Some(lp) = logprob {
                    if lps[index].is_empty() {
                        lps[index] = CompletionLogprobs::starting_at(texts[index].chars().count());
                    }
                    lps[index].push(&tok, &lp);
                }
                texts[index].push_str(&text);
            }
            GenEvent::Finished {
                index,
                reason,
                text,
            } => {
                texts[index].push_str(&text);
                reasons[index] = reason.as_str();
            }
        }
    }
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            let logprobs = if fmt.logprobs { lps[i].to_json() } else { Value::Null };
            let mut c = json!({"index": i, "text": std::mem::take(&mut texts[i]), "logprobs": logprobs, "finish_reason": reasons[i]});
            if let Some(p) = prompt_lps[i / fmt.n].as_ref().filter(|_| fmt.show_prompt_logprobs) {
                c["prompt_logprobs"] = prompt_logprobs_json(&tok, p);
            }
            c
        })
        .collect();
    let out = json!({"id": fmt.meta.id, "object": "text_completion", "created": fmt.meta.created, "model": fmt.meta.model, "choices": choices, "usage": usage_json(&gen.usage()), "system_fingerprint": null});
    Ok(Json(out).into_response())
}

/// `text_completion` chunks.
struct TextChunks {
    meta: Meta,
    tokenizer: Arc<Tokenizer>,
    n: usize,
    echo: bool,
    logprobs: bool,
    prompts: Vec<(Vec<u32>, String)>,
    /// The client asked for `prompt_logprobs` (not only implied by echo).
    show_prompt_logprobs: bool,
    include_usage: bool,
    /// Characters sent so far per choice (for `text_offset`).
    sent_chars: Vec<usize>,
}

impl TextChunks {
    fn chunk(&self, index: usize, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        let mut c = json!({"id": self.meta.id, "object": "text_completion", "created": self.meta.created, "model": self.meta.model, "system_fingerprint": null,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]});
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    fn offset(&mut self, index: usize) -> &mut usize {
        if self.sent_chars.len() <= index {
            self.sent_chars.resize(index + 1, 0);
        }
        &mut self.sent_chars[index]
    }
}

impl ChunkFormat for TextChunks {
    fn start(&mut self, out: &mut Vec<Value>) {
        if self.echo && !self.logprobs {
            for i in 0..self.prompts.len() * self.n {
                let text = self.prompts[i / self.n].1.clone();
                *self.offset(i) += text.chars().count();
                out.push(self.chunk(i, &text, Value::Null, None));
            }
        }
    }

    fn event(&mut self, ev: GenEvent, out: &mut Vec<Value>) {
        match ev {
            GenEvent::PromptLogprobs { prompt, logprobs } => {
                if !(self.echo && self.logprobs) {
                    return;
                }
                for c in 0..self.n {
                    let index = prompt * self.n + c;
                    let mut lp = CompletionLogprobs::starting_at(0);
                    lp.push_prompt(&self.tokenizer, &self.prompts[prompt].0, &logprobs);
                    let text = self.prompts[prompt].1.clone();
                    *self.offset(index) += text.chars().count();
                    out.push(self.chunk(index, &text, lp.to_json(), None));
                }
            }
            GenEvent::Token {
                index,
                text,
                logprob,
                ..
            } => {
                if text.is_empty() && logprob.is_none() {
                    return;
                }
                let at = *self.offset(index);
                let lp = match logprob {
                    Some(lp) => {
                        let mut l = CompletionLogprobs::starting_at(at);
                        l.push(&self.tokenizer, &lp);
                        l.to_json()
                    }
                    None => Value::Null,
                };
                *self.offset(index) += text.chars().count();
                out.push(self.chunk(index, &text, lp, None));
            }
            GenEvent::Finished {
                index,
                reason,
                text,
            } => {
                *self.offset(index) += text.chars().count();
                out.push(self.chunk(index, &text, Value::Null, Some(reason.as_str())));
            }
        }
    }

    fn usage_chunk(&self, usage: &Usage) -> Value {
        json!({"id": self.meta.id, "object": "text_completion", "created": self.meta.created, "model": self.meta.model, "system_fingerprint": null, "choices": [], "usage": usage_json(usage)})
    }
}
