//! Every way a choice can end, in one place.
//!
//! A choice stops on, in this order of precedence:
//! - a **stop token**: one of the request's `stop_token_ids`, or an end-of-generation token
//!   of the model unless `ignore_eos`; neither may end a choice before `min_tokens` tokens
//!   exist, so until then they are masked out of the logits before sampling
//!   (`ChoiceOutput::mask_stop_tokens`); the stop token itself is not shown as text;
//! - a **stop string** ([`StopMatcher`]), matched across token boundaries; the text before
//!   it is sent, the string and everything after are not;
//! - **length**: `max_tokens` generated or the context full; held-back text is released.
//!
//! `ChoiceOutput` applies these rules to one choice's sampled tokens and turns them into
//! text deltas (through the incremental detokenizer); the engine loop only asks it what
//! happened.

mod choice;
mod strings;

pub(crate) use choice::ChoiceOutput;
pub use strings::{StopMatcher, StopOutput};
