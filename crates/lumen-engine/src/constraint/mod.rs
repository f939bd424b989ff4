//! Constrained decoding: output that follows a JSON schema, a regular expression, a choice
//! list, a Lark grammar, or the model's tool-call format.
//!
//! # Design
//!
//! **llguidance does the grammar work.** It is the engine vLLM and llama.cpp use; Lumen
//! supplies its vocabulary (module `vocab`: each token's bytes, control tokens in llguidance's
//! special form so no text rule produces them, the end-of-generation ids as EOS) and drives
//! one matcher per sequence.
//!
//! **Compile once, off the engine thread.** [`ConstraintCompiler`] (one per model, its
//! parser factory built on first use) turns a [`ConstraintSpec`] into a
//! [`CompiledConstraint`] on the caller's blocking thread, after the rule book's size
//! limits ([`crate::request::limits`]) and under llguidance's fuel limits; it also computes
//! the first mask, so a grammar that cannot start is a 400 before any token. Compiled
//! grammars are cached by content, and each sequence starts from a clone.
//!
//! **The mask comes first.** In the engine loop, disallowed tokens get minus infinity on
//! the raw logits, before `logit_bias`, penalties, temperature and truncation, so logprobs
//! are reported after masking and sampling never leaves the grammar. Each sequence owns its
//! matcher, so batch invariance and seeded reproducibility hold as for any request. When
//! the grammar is complete the choice ends with `stop`; a grammar error mid-generation
//! fails the request with an error event rather than stopping silently.
//!
//! **Tools are a grammar plus a parser.** [`ToolCalling`] builds the Lark grammar for
//! `tool_choice` (free text until `<tool_call>` for `auto`, calls only for `required` or a
//! named function) and the Hermes system prompt for templates that do not render tools;
//! [`ToolCallParser`] splits the streamed text back into content and calls.

mod compiler;
mod seq;
mod spec;
mod tool_parse;
mod tools;
mod vocab;

pub use compiler::{CompiledConstraint, ConstraintCompiler};
pub(crate) use seq::{GrammarFailure, SeqConstraint};
pub use spec::{Constraint, ConstraintSpec, JSON_WHITESPACE};
pub use tool_parse::{ToolCallParser, ToolEvent};
pub use tools::{ToolCalling, ToolChoice, ToolDef, CALL_CLOSE, CALL_OPEN};

#[cfg(test)]
mod tests;
