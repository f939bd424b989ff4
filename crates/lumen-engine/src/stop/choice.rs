//! One choice's output side: sampled tokens in, text deltas and the finish decision out.

use std::sync::Arc;

use super::strings::StopMatcher;
use crate::detokenize::IncrementalDecoder;
use crate::request::{FinishReason, GenerateRequest};
use crate::tokenizer::Tokenizer;

/// What happened to a choice after one token.
#[derive(Debug, PartialEq, Eq)]
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
    /// The choice's grammar ended it: text held back is output, not a stop string's start.
    grammar_done: bool,
}

impl ChoiceOutput {
    pub fn new(request: Arc<GenerateRequest>, tokenizer: Arc<Tokenizer>) -> Self {
        let decoder = IncrementalDecoder::new(tokenizer.clone(), request.skip_special_tokens);
        let stop = StopMatcher::new(request.stop.clone());
        ChoiceOutput {
            request,
            tokenizer,
            decoder,
            stop,
            generated: 0,
            grammar_done: false,
        }
    }

    /// Tokens `max_tokens` still allows.
    pub fn remaining(&self) -> usize {
        self.request.max_tokens.saturating_sub(self.generated)
    }

    /// Whether `token` would end the choice as an end-of-sequence or stop token.
    pub fn is_stop_token(&self, token: u32) -> bool {
        self.request.stop_token_ids.contains(&token)
            || (!self.request.ignore_eos && self.tokenizer.is_eog(token))
    }

    /// Before sampling: while `min_tokens` is not reached, no token that would stop the
    /// choice may be drawn, so every end-of-generation id (`eog_ids`, the model's) and stop
    /// token id gets a logit of minus infinity.
    pub fn mask_stop_tokens(&self, eog_ids: &[u32], logits: &mut [f32]) {
        if self.generated >= self.request.min_tokens {
            return;
        }
        for &t in eog_ids.iter().chain(&self.request.stop_token_ids) {
            if let Some(v) = logits.get_mut(t as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
    }

    /// Accounts for `token`; `at_context_end` is true when no position is left after it.
    pub fn push(&mut self, token: u32, at_context_end: bool) -> TokenOutcome {
        self.generated += 1;
        if self.is_stop_token(token) && self.generated > self.request.min_tokens {
            let text = self.flush();
            return TokenOutcome {
                text,
                visible: false,
                finish: Some(FinishReason::Stop),
            };
        }
        let delta = self.decoder.push(token);
        let out = self.stop.push(&delta);
        let text = out.text;
        if out.stopped.is_some() {
            return TokenOutcome {
                text,
                visible: true,
                finish: Some(FinishReason::Stop),
            };
        }
        if self.generated >= self.request.max_tokens || at_context_end {
            let mut text = text;
            text.push_str(&self.flush());
            return TokenOutcome {
                text,
                visible: true,
                finish: Some(FinishReason::Length),
            };
        }
        TokenOutcome {
            text,
            visible: true,
            finish: None,
        }
    }

    /// Text to send when the choice ends for `reason`: nothing after a stop (the stop string
    /// and what follows are never shown), else whatever is still held back.
    pub fn final_text(&mut self, reason: FinishReason) -> String {
        if reason == FinishReason::Stop && !self.grammar_done {
            String::new()
        } else {
            self.flush()
        }
    }

    /// The choice's grammar is complete: it ends with `stop`, releasing held-back text.
    pub fn grammar_complete(&mut self) {
        self.grammar_done = true;
    }

    /// Releases any text still held back (pending UTF-8 or a partial stop-string match).
    fn flush(&mut self) -> String {
        let tail = self.decoder.flush();
        let mut text = self.stop.push(&tail).text;
        text.push_str(&self.stop.flush());
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Priority;
    use crate::sampler::SamplingParams;
    use crate::tokenizer::tests::{id_of, tiny_bpe};

    const EOS: u32 = 2;

    fn request(edit: impl FnOnce(&mut GenerateRequest)) -> Arc<GenerateRequest> {
        let mut r = GenerateRequest {
            prompt: vec![5],
            sampling: SamplingParams::greedy(),
            max_tokens: 10,
            min_tokens: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            n: 1,
            prompt_logprobs: None,
            priority: Priority::Interactive,
            cache_salt: None,
            skip_special_tokens: true,
            constraint: None,
        };
        edit(&mut r);
        Arc::new(r)
    }

    fn output(edit: impl FnOnce(&mut GenerateRequest)) -> (ChoiceOutput, Arc<Tokenizer>) {
        let tok = Arc::new(tiny_bpe("smollm"));
        (ChoiceOutput::new(request(edit), tok.clone()), tok)
    }

    #[test]
    fn eos_stops_and_is_not_shown() {
        let (mut out, tok) = output(|_| {});
        let hello = id_of(&tok, "hello");
        assert_eq!(
            out.push(hello, false),
            TokenOutcome {
                text: "hello".into(),
                visible: true,
                finish: None
            }
        );
        let end = out.push(EOS, false);
        assert_eq!(
            end,
            TokenOutcome {
                text: String::new(),
                visible: false,
                finish: Some(FinishReason::Stop)
            }
        );
        assert_eq!(out.generated, 2, "the stop token counts as generated");
    }

    #[test]
    fn ignore_eos_keeps_going_until_length() {
        let (mut out, _) = output(|r| {
            r.ignore_eos = true;
            r.max_tokens = 2;
        });
        assert_eq!(out.push(EOS, false).finish, None);
        assert_eq!(out.push(EOS, false).finish, Some(FinishReason::Length));
    }

    #[test]
    fn stop_token_ids_stop_like_eos() {
        let (mut out, tok) = output(|_| {});
        let world = id_of(&tok, " world");
        let (mut with_stop, _) = output(|r| r.stop_token_ids = vec![world]);
        assert_eq!(out.push(world, false).finish, None);
        let o = with_stop.push(world, false);
        assert_eq!((o.visible, o.finish), (false, Some(FinishReason::Stop)));
    }

    #[test]
    fn min_tokens_masks_stop_tokens_then_releases_them() {
        let (mut out, tok) = output(|r| {
            r.min_tokens = 2;
            r.stop_token_ids = vec![7];
        });
        let mut logits = vec![0.0f32; tok.vocab_size()];
        out.mask_stop_tokens(&[EOS], &mut logits);
        assert_eq!(logits[EOS as usize], f32::NEG_INFINITY);
        assert_eq!(logits[7], f32::NEG_INFINITY);
        assert_eq!(logits.iter().filter(|v| v.is_infinite()).count(), 2);
        // A stop token drawn anyway (the mask is the caller's job) does not end the choice
        // before min_tokens.
        assert_eq!(out.push(EOS, false).finish, None);
        assert_eq!(out.push(id_of(&tok, "hello"), false).finish, None);
        let mut logits = vec![0.0f32; tok.vocab_size()];
        out.mask_stop_tokens(&[EOS], &mut logits);
        assert!(
            logits.iter().all(|v| v.is_finite()),
            "no mask once min_tokens is reached"
        );
        assert_eq!(out.push(EOS, false).finish, Some(FinishReason::Stop));
    }

    #[test]
    fn stop_string_across_tokens_hides_itself_and_the_rest() {
        let (mut out, tok) = output(|r| r.stop = vec!["lo wor".into()]);
        let o = out.push(id_of(&tok, "hello"), false);
        assert_eq!(
            (o.text.as_str(), o.finish),
            ("hel", None),
            "'lo' may start the stop string"
        );
        let o = out.push(id_of(&tok, " world"), false);
        assert_eq!((o.text.as_str(), o.finish), ("", Some(FinishReason::Stop)));
        assert_eq!(out.final_text(FinishReason::Stop), "");
    }

    #[test]
    fn length_releases_held_back_text() {
        let (mut out, tok) = output(|r| {
            r.stop = vec!["lo!".into()];
            r.max_tokens = 1;
        });
        let o = out.push(id_of(&tok, "hello"), false);
        assert_eq!(
            (o.text.as_str(), o.finish),
            ("hello", Some(FinishReason::Length))
        );
    }

    #[test]
    fn context_end_is_length() {
        let (mut out, tok) = output(|_| {});
        assert_eq!(
            out.push(id_of(&tok, "hello"), true).finish,
            Some(FinishReason::Length)
        );
    }

    #[test]
    fn cancelled_choice_gets_its_held_text() {
        let (mut out, tok) = output(|r| r.stop = vec!["lo!".into()]);
        assert_eq!(out.push(id_of(&tok, "hello"), false).text, "hel");
        assert_eq!(out.final_text(FinishReason::Cancelled), "lo");
    }
}
