//! The per-model pieces are shared across threads; the per-sequence pieces move between them.

use lumen_engine::{ChatTemplate, IncrementalDecoder, Sampler, StopMatcher, Tokenizer};

fn shared<T: Send + Sync>() {}
fn movable<T: Send>() {}

#[test]
fn engine_types_can_cross_threads() {
    shared::<Tokenizer>();
    shared::<ChatTemplate>();
    movable::<Sampler>();
    movable::<IncrementalDecoder>();
    movable::<StopMatcher>();
}
