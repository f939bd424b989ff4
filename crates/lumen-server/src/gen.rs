//! Drives the engine streams of one HTTP request and turns their events into one ordered
//! sequence of [`GenEvent`]s, whatever the endpoint and whether it streams.
//!
//! A request may hold several engine requests (a completions call with a list of prompts);
//! their events are merged, choice indices renumbered to `prompt * n + choice` as OpenAI
//! does, latency recorded, and the request timeout enforced. Dropping a [`Generation`] drops
//! its engine streams, which cancels them in the engine: that is how a disconnected client
//! (axum drops the handler future or the response body) stops costing compute.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{SelectAll, Stream, StreamExt};
use lumen_engine::{Event, FinishReason, RequestStream, TokenLogprob, Usage};

use crate::error::ServerError;
use crate::metrics::ModelMetrics;

/// One step of a generation as the endpoints see it.
#[derive(Debug)]
pub enum GenEvent {
    /// Logprobs of prompt `prompt`'s tokens (first entry `None`).
    PromptLogprobs {
        /// Prompt index.
        prompt: usize,
        /// One entry per prompt token.
        logprobs: Vec<Option<TokenLogprob>>,
    },
    /// A token of choice `index`.
    Token {
        /// Global choice index.
        index: usize,
        /// Token id.
        token: u32,
        /// Text it adds.
        text: String,
        /// Its logprobs, when asked for.
        logprob: Option<TokenLogprob>,
    },
    /// Choice `index` ended.
    Finished {
        /// Global choice index.
        index: usize,
        /// Why.
        reason: FinishReason,
        /// Text released at the end.
        text: String,
    },
}

type Events = Pin<Box<dyn Stream<Item = (usize, Event)> + Send>>;

fn events_of(prompt: usize, stream: RequestStream) -> Events {
    Box::pin(futures_util::stream::unfold(
        stream,
        move |mut s| async move { s.recv().await.map(|ev| ((prompt, ev), s)) },
    ))
}

/// The running engine requests behind one HTTP request.
pub struct Generation {
    events: SelectAll<Events>,
    n: usize,
    prompt_lens: Vec<usize>,
    usages: Vec<Option<Usage>>,
    finished: Vec<bool>,
    tokens: Vec<usize>,
    last_token: Vec<Option<Instant>>,
    pending: VecDeque<GenEvent>,
    arrived: Instant,
    deadline: Option<tokio::time::Instant>,
    first_token: bool,
    ended: bool,
    metrics: Arc<ModelMetrics>,
}

impl Generation {
    /// Merges `streams` (one per prompt, with its length); `deadline` cancels what is left.
    pub fn new(
        streams: Vec<(RequestStream, usize)>,
        n: usize,
        arrived: Instant,
        deadline: Option<tokio::time::Instant>,
        metrics: Arc<ModelMetrics>,
    ) -> Self {
        let choices = streams.len() * n;
        let prompt_lens = streams.iter().map(|s| s.1).collect();
        let mut events = SelectAll::new();
        let num_prompts = streams.len();
        for (i, (s, _)) in streams.into_iter().enumerate() {
            events.push(events_of(i, s));
        }
        Generation {
            events,
            n,
            prompt_lens,
            usages: vec![None; num_prompts],
            finished: vec![false; choices],
            tokens: vec![0; choices],
            last_token: vec![None; choices],
            pending: VecDeque::new(),
            arrived,
            deadline,
            first_token: false,
            ended: false,
            metrics,
        }
    }

    /// Total number of choices.
    pub fn num_choices(&self) -> usize {
        self.finished.len()
    }

    /// The next event; `Ok(None)` once every choice has finished.
    pub async fn next(&mut self) -> Result<Option<GenEvent>, ServerError> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Some(ev));
            }
            if self.ended {
                return Ok(None);
            }
            if self.usages.iter().all(Option::is_some) {
                self.end();
                continue;
            }
            let next = match self.deadline {
                Some(d) => match tokio::time::timeout_at(d, self.events.next()).await {
                    Ok(ev) => ev,
                    Err(_) => {
                        tracing::warn!("request timed out; cancelling it");
                        self.cancel_rest();
                        continue;
                    }
                },
                None => self.events.next().await,
            };
            match next {
                Some((prompt, ev)) => self.on_event(prompt, ev)?,
                // Every stream closed without `Done`: the engine thread is gone.
                None => {
                    self.ended = true;
                    return Err(ServerError::EngineStopped);
                }
            }
        }
    }

    fn on_event(&mut self, prompt: usize, ev: Event) -> Result<(), ServerError> {
        match ev {
            Event::PromptLogprobs(logprobs) => self
                .pending
                .push_back(GenEvent::PromptLogprobs { prompt, logprobs }),
            Event::Token {
                choice,
                token,
                text,
                logprob,
            } => {
                let index = prompt * self.n + choice;
                let now = Instant::now();
                if !self.first_token {
                    self.first_token = true;
                    self.metrics
                        .ttft
                        .observe(now.duration_since(self.arrived).as_secs_f64());
                }
                if let Some(slot) = self.last_token.get_mut(index) {
                    if let Some(prev) = slot.replace(now) {
                        self.metrics
                            .itl
                            .observe(now.duration_since(prev).as_secs_f64());
                    }
                }
                if let Some(t) = self.tokens.get_mut(index) {
                    *t += 1;
                }
                self.pending.push_back(GenEvent::Token {
                    index,
                    token,
                    text,
                    logprob,
                });
            }
            Event::Finished {
                choice,
                reason,
                text,
            } => {
                let index = prompt * self.n + choice;
                if let Some(f) = self.finished.get_mut(index) {
                    *f = true;
                }
                self.pending.push_back(GenEvent::Finished {
                    index,
                    reason,
                    text,
                });
            }
            Event::Done(usage) => {
                if let Some(u) = self.usages.get_mut(prompt) {
                    *u = Some(usage);
                }
            }
            Event::Error(message) => {
                self.events = SelectAll::new();
                self.ended = true;
                return Err(ServerError::Internal(format!(
                    "generation failed: {message}"
                )));
            }
        }
        Ok(())
    }

    /// Cancels every engine request and finishes open choices as `cancelled`.
    fn cancel_rest(&mut self) {
        self.events = SelectAll::new();
        for (index, done) in self.finished.iter_mut().enumerate() {
            if !*done {
                *done = true;
                self.pending.push_back(GenEvent::Finished {
                    index,
                    reason: FinishReason::Cancelled,
                    text: String::new(),
                });
            }
        }
        self.end();
    }

    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.metrics
                .e2e
                .observe(self.arrived.elapsed().as_secs_f64());
        }
    }

    /// Token counts over all prompts (estimated from the stream for cancelled prompts).
    pub fn usage(&self) -> Usage {
        let mut total = Usage::default();
        for (p, u) in self.usages.iter().enumerate() {
            let u = u.unwrap_or_else(|| Usage {
                prompt_tokens: self.prompt_lens[p],
                cached_prompt_tokens: 0,
                completion_tokens: self.tokens[p * self.n..(p + 1) * self.n].iter().sum(),
            });
            total.prompt_tokens += u.prompt_tokens;
            total.cached_prompt_tokens += u.cached_prompt_tokens;
            total.completion_tokens += u.completion_tokens;
        }
        total
    }
}

/// OpenAI's `usage` object.
pub fn usage_json(u: &Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    })
}

/// Submits every request, or none: on the first refusal the ones already queued are dropped
/// (and so cancelled) and the error is returned.
pub fn submit_all(
    engine: &lumen_engine::EngineHandle,
    requests: Vec<lumen_engine::GenerateRequest>,
) -> Result<Vec<(RequestStream, usize)>, ServerError> {
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        let len = r.prompt.len();
        out.push((engine.submit(r)?, len));
    }
    Ok(out)
}
