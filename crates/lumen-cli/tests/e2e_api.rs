//! The OpenAI API end to end: the official `openai` client against `lumen serve`
//! (chat, streaming, completions, logprobs, n, seeds, stop, models, tokenizer, every error,
//! embeddings, structured output and tool calls, multi-turn reuse).

mod common;

use std::time::Duration;

#[test]
fn openai_api_end_to_end() {
    let Some(python) = common::prerequisites() else {
        return;
    };
    let server = common::Server::start(&[]);
    server.pytest(&python, "test_api.py", Duration::from_secs(900));
    server.pytest(&python, "test_errors.py", Duration::from_secs(300));
    server.pytest(&python, "test_embeddings.py", Duration::from_secs(300));
    server.pytest(&python, "test_structured.py", Duration::from_secs(900));
    server.pytest(&python, "test_multiturn.py", Duration::from_secs(300));
}
