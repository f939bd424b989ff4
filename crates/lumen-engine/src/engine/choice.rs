//! One choice's output side: turning sampled tokens into text deltas, stop handling, and
//! deciding when the choice is finished.

use std::sync::Arc;

use crate::detokenize::IncrementalDecoder;
use crate::request::{FinishReason, GenerateRequest};
use crate::stop::StopMatcher;
use crate::tokenizer::Tokenizer;

/// What happened to a choice after one token.
pub(crate) struct TokenOutcome {
    /// Text to emit now.
    pub text: String,
    /// Whether the token itself is part of the visible output (not a stop/EOS token).
    pub visible: bool,
    /// Set when the choice is finished.
    pub finish: Option<FinishReason>,
}

/// Output state of one choice.
pub(crate) struct ChoiceOutput {
    request: Arc<GenerateRequest>,
    tokenizer: Arc<Tokenizer>,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    /// Tokens generated so far (including a final stop token).
    pub generated: usize,
}

impl ChoiceOutput {
    pub fn new(request: Arc<GenerateRequest>, tokenizer: Arc<Tokenizer>) -> Self {
        let decoder = IncrementalDecoder::new(tokenizer.clone(), request.skip_special_tokens);
        let stop = StopMatcher::new(request.stop.clone());
        ChoiceOutput { request, tokenizer, decoder, stop, generated: 0 }
    }

    /// Whether `token` would end the choice as an end-of-sequence or stop token.
    pub fn is_stop_token(&self, token: u32) -> bool {
        self.request.stop_token_ids.contains(&token) || (!self.request.ignore_eos && self.tokenizer.is_eog(token))
    }

    /// Whether stop tokens must be suppressed before sampling (min_tokens not reached yet).
    pub fn suppress_stop_tokens(&self) -> bool {
        self.generated < self.request.min_tokens
    }

    /// Accounts for `token`; `at_context_end` is true when no position is left after it.
    pub fn push(&mut self, token: u32, at_context_end: bool) -> TokenOutcome {
        self.generated += 1;
        if self.is_stop_token(token) && self.generated > self.request.min_tokens {
            let text = self.flush();
            return TokenOutcome { text, visible: false, finish: Some(FinishReason::Stop) };
        }
        let delta = self.decoder.push(token);
        let out = self.stop.push(&delta);
        let text = out.text;
        if out.stopped.is_some() {
            return TokenOutcome { text, visible: true, finish: Some(FinishReason::Stop) };
        }
        if self.generated >= self.request.max_tokens || at_context_end {
            let mut text = text;
            text.push_str(&self.flush());
            return TokenOutcome { text, visible: true, finish: Some(FinishReason::Length) };
        }
        TokenOutcome { text, visible: true, finish: None }
    }

    /// Releases any text still held back (pending UTF-8 or a partial stop-string match).
    pub fn flush(&mut self) -> String {
        let tail = self.decoder.flush();
        let mut text = self.stop.push(&tail).text;
        text.push_str(&self.stop.flush());
        text
    }
}
