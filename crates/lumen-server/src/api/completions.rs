//! `POST /v1/completions` (the legacy text completions API).
//!
//! A prompt may be a string, a list of strings, a list of token ids or a list of such lists;
//! each becomes its own engine request with `n` choices, numbered `prompt * n + choice`.
//! `echo` prepends the prompt to each choice; with `logprobs` the prompt's own logprobs come
//! first (`null` for its first token), which is why echo asks the engine for prompt logprobs.

use std::sync::Arc;

use lumen_engine::{Api, GenerationParams, Tokenizer, ValidParams};
use serde::Deserialize;

use super::generate::{ChunkFormat, Endpoint, Prompt};
use super::logprobs::{prompt_logprobs, CompletionLogprobs};
use super::response::{Envelope, TextChoice};
use super::uncertainty::UncertaintyTally;
use super::Meta;
use crate::error::ServerError;
use crate::gen::GenEvent;
use crate::state::ChatServed;

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

/// Tokenizes every prompt.
fn tokenize_prompts(prompt: PromptIn, tok: &Tokenizer) -> Result<Vec<Prompt>, ServerError> {
    let vocab = tok.vocab_size();
    let texts = |v: Vec<String>| -> Result<Vec<Prompt>, ServerError> {
        v.into_iter()
            .map(|text| {
                Ok(Prompt {
                    ids: tok.encode(&text, true, true)?,
                    text,
                })
            })
            .collect()
    };
    let lists = |v: Vec<Vec<i64>>| -> Result<Vec<Prompt>, ServerError> {
        v.into_iter()
            .map(|l| {
                let ids = ids(l, vocab)?;
                let text = tok.decode(&ids, false)?;
                Ok(Prompt { ids, text })
            })
            .collect()
    };
    let out = match prompt {
        PromptIn::Text(t) => texts(vec![t])?,
        PromptIn::Texts(v) => texts(v)?,
        PromptIn::Ids(v) => lists(vec![v])?,
        PromptIn::IdLists(v) => lists(v)?,
    };
    if out.is_empty() || out.iter().any(|p| p.ids.is_empty()) {
        return Err(ServerError::param("prompt", "the prompt is empty"));
    }
    Ok(out)
}

/// The text completions endpoint's differences from chat.
pub struct Completions;

impl Endpoint for Completions {
    const API: Api = Api::Completions;
    const ID_PREFIX: &'static str = "cmpl";
    type Body = CompletionBody;
    type Format = TextChunks;

    fn model_name(body: &CompletionBody) -> &str {
        &body.model
    }

    fn map_params(body: &CompletionBody, params: &mut GenerationParams) {
        params.logprobs = body.logprobs.map(|_| true);
        params.top_logprobs = body.logprobs;
        params.echo = body.echo;
        params.best_of = body.best_of;
    }

    fn prompts(
        body: CompletionBody,
        model: &ChatServed,
        _: &ValidParams,
    ) -> Result<Vec<Prompt>, ServerError> {
        tokenize_prompts(body.prompt, model.handle.tokenizer())
    }

    fn format(
        meta: Meta,
        tokenizer: Arc<Tokenizer>,
        params: &ValidParams,
        prompts: Vec<Prompt>,
        include_usage: bool,
    ) -> TextChunks {
        let choices = prompts.len() * params.n();
        TextChunks {
            meta,
            tokenizer,
            n: params.n(),
            echo: params.echo(),
            logprobs: params.logprobs().is_some(),
            show_prompt_logprobs: params.show_prompt_logprobs(),
            prompts,
            include_usage,
            offsets: vec![0; choices],
            uncertainty: params.uncertainty().then(UncertaintyTally::default),
        }
    }
}

/// `text_completion` chunks.
pub struct TextChunks {
    meta: Meta,
    tokenizer: Arc<Tokenizer>,
    n: usize,
    echo: bool,
    logprobs: bool,
    /// The client asked for `prompt_logprobs` (not only implied by echo).
    show_prompt_logprobs: bool,
    prompts: Vec<Prompt>,
    include_usage: bool,
    /// Per choice, the character offset at which the next token's text starts (for
    /// `text_offset`), counted over token pieces and the echoed prompt.
    offsets: Vec<usize>,
    /// Per-choice uncertainty sums, when `lumen_uncertainty` was asked for.
    uncertainty: Option<UncertaintyTally>,
}

impl TextChunks {
    fn push(&self, out: &mut Vec<Envelope<TextChoice>>, choice: TextChoice) {
        out.push(self.chunk(vec![choice]));
    }

    fn offset(&mut self, index: usize) -> &mut usize {
        if self.offsets.len() <= index {
            self.offsets.resize(index + 1, 0);
        }
        &mut self.offsets[index]
    }
}

impl ChunkFormat for TextChunks {
    type Choice = TextChoice;
    type FinalChoice = TextChoice;
    const OBJECT: &'static str = "text_completion";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn include_usage(&self) -> bool {
        self.include_usage
    }

    fn start(&mut self, out: &mut Vec<Envelope<TextChoice>>) {
        // With logprobs the echo waits for the prompt's logprobs (see `event`).
        if !self.echo || self.logprobs {
            return;
        }
        for index in 0..self.prompts.len() * self.n {
            let text = self.prompts[index / self.n].text.clone();
            *self.offset(index) += text.chars().count();
            self.push(
                out,
                TextChoice {
                    index,
                    text,
                    logprobs: None,
                    finish_reason: None,
                    prompt_logprobs: None,
                    lumen_uncertainty: None,
                },
            );
        }
    }

    fn event(&mut self, ev: GenEvent, out: &mut Vec<Envelope<TextChoice>>) {
        match ev {
            GenEvent::PromptLogprobs { prompt, logprobs } => {
                let echoed = self.echo && self.logprobs;
                if !echoed && !self.show_prompt_logprobs {
                    return;
                }
                let shown = self
                    .show_prompt_logprobs
                    .then(|| prompt_logprobs(&self.tokenizer, &logprobs));
                for c in 0..self.n {
                    let index = prompt * self.n + c;
                    let (text, lp) = if echoed {
                        let mut lp = CompletionLogprobs::default();
                        let tok = self.tokenizer.clone();
                        let ids = self.prompts[prompt].ids.clone();
                        lp.push_prompt(&tok, self.offset(index), &ids, &logprobs);
                        (self.prompts[prompt].text.clone(), Some(lp))
                    } else {
                        (String::new(), None)
                    };
                    let choice = TextChoice {
                        index,
                        text,
                        logprobs: lp,
                        finish_reason: None,
                        prompt_logprobs: shown.clone(),
                        lumen_uncertainty: None,
                    };
                    self.push(out, choice);
                }
            }
            GenEvent::Token {
                index,
                text,
                logprob,
                uncertainty,
                ..
            } => {
                if text.is_empty() && logprob.is_none() && uncertainty.is_none() {
                    return;
                }
                let lumen_uncertainty = match (&mut self.uncertainty, uncertainty) {
                    (Some(t), Some(u)) => Some(t.token(index, &u)),
                    _ => None,
                };
                let logprobs = logprob.map(|lp| {
                    let mut l = CompletionLogprobs::default();
                    let tok = self.tokenizer.clone();
                    l.push(&tok, self.offset(index), &lp);
                    l
                });
                self.push(
                    out,
                    TextChoice {
                        index,
                        text,
                        logprobs,
                        finish_reason: None,
                        prompt_logprobs: None,
                        lumen_uncertainty,
                    },
                );
            }
            GenEvent::Finished {
                index,
                reason,
                text,
            } => {
                let choice = TextChoice {
                    index,
                    text,
                    logprobs: None,
                    finish_reason: Some(reason.as_str()),
                    prompt_logprobs: None,
                    lumen_uncertainty: self.uncertainty.as_mut().map(|t| t.finish(index)),
                };
                self.push(out, choice);
            }
        }
    }

    fn empty_answer(&self, choices: usize) -> Envelope<TextChoice> {
        Envelope::empty_text(
            &self.meta,
            choices,
            self.logprobs,
            self.uncertainty.is_some(),
        )
    }
}
