//! Fuzzes the chat-template renderer: any template source must compile or fail, and
//! render a fixed conversation or fail, never panic, abort or hang. Budget errors are
//! the expected answer to hostile templates.
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run chat_template` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lumen_engine::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else {
        return;
    };
    let conversation = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Bye"),
    ];
    let tools = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let _ = template.render(&conversation, true, Some(&tools));
    let _ = template.check_budget();
});
