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
use lumen_engine::{
    EngineHandle, Event, FinishReason, RequestStream, TokenLogprob, TokenUncertainty, Usage,
    ValidRequest,
};

use crate::error::ServerError;
use crate::metrics::ModelMetrics;
use crate::tenancy::Meter;

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
        /// Its uncertainty, when asked for.
        uncertainty: Option<TokenUncertainty>,
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

/// What one HTTP request's engine events add up to so far.
pub struct Tally {
    n: usize,
    prompt_lens: Vec<usize>,
    usages: Vec<Option<Usage>>,
    finished: Vec<bool>,
    tokens: Vec<usize>,
    last_token: Vec<Option<Instant>>,
    pending: VecDeque<GenEvent>,
    arrived: Instant,
    first_token: bool,
    first_token_at: Option<Instant>,
    ended: bool,
    metrics: Arc<ModelMetrics>,
}

impl Tally {
    /// A tally over prompts of `prompt_lens` tokens with `n` choices each.
    pub fn new(
        prompt_lens: Vec<usize>,
        n: usize,
        arrived: Instant,
        metrics: Arc<ModelMetrics>,
    ) -> Self {
        let choices = prompt_lens.len() * n;
        Tally {
            n,
            usages: vec![None; prompt_lens.len()],
            prompt_lens,
            finished: vec![false; choices],
            tokens: vec![0; choices],
            last_token: vec![None; choices],
            pending: VecDeque::new(),
            arrived,
            first_token: false,
            first_token_at: None,
            ended: false,
            metrics,
        }
    }

    /// Total number of choices.
    pub fn num_choices(&self) -> usize {
        self.finished.len()
    }

    /// The next event ready to be handed out.
    pub fn pop(&mut self) -> Option<GenEvent> {
        self.pending.pop_front()
    }

    /// Whether every prompt's engine request has reported `Done` (or the tally was ended).
    pub fn all_done(&self) -> bool {
        self.ended || self.usages.iter().all(Option::is_some)
    }

    /// Accounts for event `ev` of prompt `prompt`; an engine error ends the tally.
    pub fn on_event(&mut self, prompt: usize, ev: Event) -> Result<(), ServerError> {
        match ev {
            Event::PromptLogprobs(logprobs) => self
                .pending
                .push_back(GenEvent::PromptLogprobs { prompt, logprobs }),
            Event::Token {
                choice,
                token,
                text,
                logprob,
                uncertainty,
            } => {
                let index = prompt * self.n + choice;
                let now = Instant::now();
                if !self.first_token {
                    self.first_token = true;
                    self.first_token_at = Some(now);
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
                    uncertainty,
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
                self.ended = true;
                return Err(ServerError::Internal(format!(
                    "generation failed: {message}"
                )));
            }
            Event::GrammarError { param, message } => {
                self.ended = true;
                return Err(ServerError::param(param, message));
            }
        }
        Ok(())
    }

    /// Finishes every open choice as `cancelled` and ends the tally.
    pub fn cancel_rest(&mut self) {
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

    /// Ends the tally (records the end-to-end latency once).
    pub fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.metrics
                .e2e
                .observe(self.arrived.elapsed().as_secs_f64());
        }
    }

    /// Arrival to the first token, once one came.
    pub fn ttft(&self) -> Option<std::time::Duration> {
        self.first_token_at.map(|t| t.duration_since(self.arrived))
    }

    /// Token counts over all prompts (counted from the stream for prompts that never
    /// reported theirs, e.g. cancelled ones).
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

/// The running engine requests behind one HTTP request.
pub struct Generation {
    events: SelectAll<Events>,
    deadline: Option<tokio::time::Instant>,
    tally: Tally,
    /// The tally has been ended and its last events handed out.
    over: bool,
    /// An engine error or a stopped engine ended it.
    failed: bool,
    /// The request timeout cancelled it.
    timed_out: bool,
    /// Admission and accounting; settled when the generation is dropped.
    meter: Option<Meter>,
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
        let prompt_lens = streams.iter().map(|s| s.1).collect();
        let mut events = SelectAll::new();
        for (i, (s, _)) in streams.into_iter().enumerate() {
            events.push(events_of(i, s));
        }
        Generation {
            events,
            deadline,
            tally: Tally::new(prompt_lens, n, arrived, metrics),
            over: false,
            failed: false,
            timed_out: false,
            meter: None,
        }
    }

    /// Hands the request's meter to the generation: however the generation ends (finished,
    /// failed, timed out, or dropped because the client went away), dropping it settles the
    /// meter with the tokens counted so far.
    pub fn with_meter(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Total number of choices.
    pub fn num_choices(&self) -> usize {
        self.tally.num_choices()
    }

    /// The next event; `Ok(None)` once every choice has finished.
    pub async fn next(&mut self) -> Result<Option<GenEvent>, ServerError> {
        loop {
            if let Some(ev) = self.tally.pop() {
                return Ok(Some(ev));
            }
            if self.over {
                return Ok(None);
            }
            if self.tally.all_done() {
                self.tally.end();
                self.over = true;
                continue;
            }
            let next = match self.deadline {
                Some(d) => match tokio::time::timeout_at(d, self.events.next()).await {
                    Ok(ev) => ev,
                    Err(_) => {
                        tracing::warn!("request timed out; cancelling it");
                        // Dropping the streams cancels the engine requests.
                        self.events = SelectAll::new();
                        self.timed_out = true;
                        self.tally.cancel_rest();
                        continue;
                    }
                },
                None => self.events.next().await,
            };
            match next {
                Some((prompt, ev)) => {
                    if let Err(e) = self.tally.on_event(prompt, ev) {
                        self.events = SelectAll::new();
                        self.over = true;
                        self.failed = true;
                        return Err(e);
                    }
                }
                // Every stream closed without `Done`: the engine thread is gone.
                None => {
                    self.over = true;
                    self.failed = true;
                    return Err(ServerError::EngineStopped);
                }
            }
        }
    }

    /// Token counts over all prompts.
    pub fn usage(&self) -> Usage {
        self.tally.usage()
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Some(mut m) = self.meter.take() {
            m.set_usage(self.tally.usage());
            if let Some(t) = self.tally.ttft() {
                m.set_ttft(t);
            }
            m.set_outcome(if self.failed {
                lumen_store::Outcome::Error
            } else if self.over && !self.timed_out {
                lumen_store::Outcome::Ok
            } else {
                lumen_store::Outcome::Cancelled
            });
        }
    }
}

/// Submits every request, or none: on the first refusal the ones already queued are dropped
/// (and so cancelled) and the error is returned.
pub fn submit_all(
    engine: &EngineHandle,
    requests: Vec<ValidRequest>,
) -> Result<Vec<(RequestStream, usize)>, ServerError> {
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        let len = r.prompt_tokens();
        out.push((engine.submit(r)?, len));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(prompts: usize, n: usize) -> (Tally, Arc<ModelMetrics>) {
        let metrics = Arc::new(ModelMetrics::default());
        (
            Tally::new(vec![10; prompts], n, Instant::now(), metrics.clone()),
            metrics,
        )
    }

    fn token(choice: usize) -> Event {
        Event::Token {
            choice,
            token: 7,
            text: "x".into(),
            logprob: None,
            uncertainty: None,
        }
    }

    fn drain(t: &mut Tally) -> Vec<GenEvent> {
        std::iter::from_fn(|| t.pop()).collect()
    }

    #[test]
    fn choices_are_numbered_prompt_times_n_plus_choice() {
        let (mut t, _) = tally(2, 3);
        assert_eq!(t.num_choices(), 6);
        t.on_event(1, token(2)).unwrap();
        t.on_event(0, token(1)).unwrap();
        let idx: Vec<usize> = drain(&mut t)
            .into_iter()
            .map(|e| match e {
                GenEvent::Token { index, .. } => index,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(idx, vec![5, 1]);
    }

    #[test]
    fn done_from_every_prompt_ends_it_with_the_engines_usage() {
        let (mut t, metrics) = tally(2, 1);
        let u = |c| Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 4,
            completion_tokens: c,
        };
        t.on_event(0, Event::Done(u(3))).unwrap();
        assert!(!t.all_done());
        t.on_event(1, Event::Done(u(5))).unwrap();
        assert!(t.all_done());
        assert_eq!(
            t.usage(),
            Usage {
                prompt_tokens: 20,
                cached_prompt_tokens: 8,
                completion_tokens: 8
            }
        );
        t.end();
        t.end();
        assert_eq!(metrics.e2e.count(), 1, "end-to-end latency recorded once");
    }

    #[test]
    fn cancel_finishes_open_choices_and_counts_streamed_tokens() {
        let (mut t, _) = tally(2, 2);
        t.on_event(0, token(0)).unwrap();
        t.on_event(0, token(0)).unwrap();
        t.on_event(
            0,
            Event::Finished {
                choice: 0,
                reason: FinishReason::Length,
                text: String::new(),
            },
        )
        .unwrap();
        t.on_event(1, token(1)).unwrap();
        drain(&mut t);
        t.cancel_rest();
        let cancelled: Vec<usize> = drain(&mut t)
            .into_iter()
            .map(|e| match e {
                GenEvent::Finished {
                    index,
                    reason: FinishReason::Cancelled,
                    ..
                } => index,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(cancelled, vec![1, 2, 3], "choice 0 had finished already");
        assert!(t.all_done());
        assert_eq!(
            t.usage(),
            Usage {
                prompt_tokens: 20,
                cached_prompt_tokens: 0,
                completion_tokens: 3
            }
        );
    }

    #[test]
    fn first_token_latency_once_and_gaps_per_choice() {
        let (mut t, metrics) = tally(1, 2);
        t.on_event(0, token(0)).unwrap();
        t.on_event(0, token(1)).unwrap();
        t.on_event(0, token(0)).unwrap();
        assert_eq!(metrics.ttft.count(), 1);
        assert_eq!(metrics.itl.count(), 1, "only choice 0 had a previous token");
    }

    #[test]
    fn an_engine_error_is_an_internal_error() {
        let (mut t, _) = tally(1, 1);
        let e = t.on_event(0, Event::Error("boom".into())).unwrap_err();
        assert!(matches!(e, ServerError::Internal(ref m) if m.contains("boom")));
        assert!(t.all_done());
    }

    #[test]
    fn prompt_logprobs_keep_their_prompt_index() {
        let (mut t, _) = tally(3, 4);
        t.on_event(2, Event::PromptLogprobs(vec![None])).unwrap();
        assert!(matches!(
            drain(&mut t).as_slice(),
            [GenEvent::PromptLogprobs { prompt: 2, .. }]
        ));
    }
}
