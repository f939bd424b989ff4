use super::*;

/// SmolLM2-135M-Instruct's `tokenizer.chat_template`.
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Meta-Llama-3-8B-Instruct's template.
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// A Mistral-style template that rejects conversations whose roles do not alternate.
const ALTERNATING: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";

fn msgs(v: &[(&str, &str)]) -> Vec<ChatMessage> {
    v.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
}

#[test]
fn smollm2_template_adds_default_system_prompt() {
    let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
    let out = t.render(&msgs(&[("user", "Hi")]), true, None).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = t
        .render(
            &msgs(&[("system", "Be brief."), ("user", "Hi")]),
            false,
            None,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn llama3_template_uses_bos_and_trim() {
    let t = ChatTemplate::new(LLAMA3, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let out = t
        .render(
            &msgs(&[("system", "You are helpful."), ("user", "  Hi \n")]),
            true,
            None,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn raise_exception_is_a_template_exception() {
    let t = ChatTemplate::new(ALTERNATING, "<s>", "</s>").unwrap();
    let ok = t
        .render(
            &msgs(&[("user", "a"), ("assistant", "b"), ("user", "c")]),
            true,
            None,
        )
        .unwrap();
    assert_eq!(ok, "<s>[INST] a [/INST]b</s>[INST] c [/INST]");
    let err = t
        .render(&msgs(&[("user", "a"), ("user", "b")]), true, None)
        .unwrap_err();
    match err {
        EngineError::TemplateException(m) => assert!(m.contains("must alternate"), "{m}"),
        other => panic!("expected a template exception, got {other:?}"),
    }
}

#[test]
fn syntax_and_render_errors_are_named() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", "", "").unwrap_err();
    assert!(
        matches!(&err, EngineError::TemplateSyntax(m) if m.contains("chat_template")),
        "{err}"
    );
    let t = ChatTemplate::new("{{ messages[0].content.nosuchmethod() }}", "", "").unwrap();
    let err = t.render(&msgs(&[("user", "x")]), false, None).unwrap_err();
    assert!(matches!(err, EngineError::TemplateRender(_)), "{err}");
}

#[test]
fn python_methods_loop_controls_and_helpers_work() {
    let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.content.startswith('stop') %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}[{{ m.role.upper() }}:{{ m.content.strip() }}]{% endfor %}{{ ns.n }}|{{ strftime_now('%Y') | length }}|{% if tools %}{{ tools | tojson }}{% else %}none{% endif %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let conv = msgs(&[
        ("user", "  a  "),
        ("assistant", "b"),
        ("user", "stop here"),
        ("user", "c"),
    ]);
    assert_eq!(
        t.render(&conv, false, None).unwrap(),
        "[USER:a][ASSISTANT:b]2|4|none"
    );
    let tools = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
    let out = t.render(&conv[..1], false, Some(&tools)).unwrap();
    assert_eq!(
        out,
        r#"[USER:a]1|4|[{"function": {"name": "f"}, "type": "function"}]"#
    );
}

#[test]
fn trim_and_lstrip_blocks_match_hugging_face() {
    let src = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert_eq!(
        t.render(&msgs(&[("user", "x"), ("user", "y")]), false, None)
            .unwrap(),
        "x\ny\n"
    );
}

#[test]
fn content_parts_are_flattened() {
    let m = ChatMessage::from_json(&serde_json::json!({
        "role": "user",
        "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    }))
    .unwrap();
    assert_eq!(m, ChatMessage::new("user", "one\ntwo"));
    let m =
        ChatMessage::from_json(&serde_json::json!({"role": "assistant", "content": null})).unwrap();
    assert_eq!(m.content, "");
    let bad = ChatMessage::from_json(&serde_json::json!({
        "role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]
    }));
    assert!(matches!(bad, Err(EngineError::InvalidMessage(_))));
    assert!(ChatMessage::from_json(&serde_json::json!({"content": "no role"})).is_err());
}

#[test]
fn chatml_is_the_default() {
    let t = ChatTemplate::chatml("", "").unwrap();
    let out = t.render(&msgs(&[("user", "Hi")]), true, None).unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(t.source(), CHATML_TEMPLATE);
}
