//! Hostile chat templates fail with a budget error, quickly and without a memory blow-up.
//!
//! Each bomb renders on its own thread with a small (2 MiB) stack, as on tokio's blocking
//! pool, and must return `TemplateBudget` within a few seconds. Memory is checked as the
//! growth of this process's peak RSS (`VmHWM`) over the whole file, which tests run in
//! one process: any bomb that allocated hundreds of MiB would show.

use std::time::{Duration, Instant};

use lumen_engine::{ChatMessage, ChatTemplate, EngineError};

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Bye"),
    ]
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Renders `source` on a 2 MiB thread; returns the error and how long it took.
fn render_bomb(source: &'static str) -> (EngineError, Duration) {
    let start = Instant::now();
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let t = ChatTemplate::new(source, "<s>", "</s>")?;
            t.render(&conversation(), true, None)
        })
        .unwrap();
    let result = handle.join().expect("the render must not panic");
    let err = result.expect_err("a bomb must not render");
    (err, start.elapsed())
}

fn assert_budget(source: &'static str) {
    let before = peak_rss_kib();
    let (err, took) = render_bomb(source);
    assert!(
        matches!(err, EngineError::TemplateBudget(_)),
        "{source}: expected a budget error, got {err:?}"
    );
    assert!(took < Duration::from_secs(5), "{source}: took {took:?}");
    if let (Some(a), Some(b)) = (before, peak_rss_kib()) {
        let grown_mib = b.saturating_sub(a) / 1024;
        assert!(grown_mib < 64, "{source}: peak RSS grew by {grown_mib} MiB");
    }
    println!("{source}\n  -> {err} in {took:?}");
}

#[test]
fn doubling_bomb() {
    assert_budget("{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}");
    assert_budget("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}");
    assert_budget("{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}");
    // Doubling without a loop.
    assert_budget("{% set a = 'x' * 1000 %}{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}{% set e = d ~ d %}{% set f = e ~ e %}{% set g = f ~ f %}{% set h = g ~ g %}{% set i = h ~ h %}{% set j = i ~ i %}{% set k = j ~ j %}{% set l = k ~ k %}{{ l|length }}");
}

#[test]
fn nested_range_loops() {
    assert_budget("{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}");
    // Looping without printing anything.
    assert_budget("{% for i in range(100000) %}{% for j in range(100000) %}{% set x = i %}{% endfor %}{% endfor %}");
}

#[test]
fn huge_range() {
    assert_budget("{% for i in range(1000000000) %}{% endfor %}");
    assert_budget("{{ (range(100000) * 100000) | length }}");
    assert_budget("{{ range(100000) + range(100000) + range(100000) }}");
}

#[test]
fn string_multiplication() {
    assert_budget("{{ 'a' * 1000000000 }}");
    assert_budget("{% set s = 'a' * 1000000 %}{{ (s * 4) | length }}");
    assert_budget("{{ ('a' * 100000) * 100000 }}");
}

#[test]
fn deep_recursion() {
    assert_budget("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    assert_budget("{% macro f(n) %}{{ n }}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(0) }}");
    assert_budget("{% for m in [[[]]] recursive %}{{ loop([m] + [m]) }}{% endfor %}");
}

#[test]
fn huge_join_and_other_filters() {
    assert_budget("{% set s = 'a' * 500000 %}{{ range(100000) | join(s) }}");
    assert_budget("{% set s = 'a' * 500000 %}{{ ([s] * 100) | join }}");
    assert_budget("{% set s = 'a' * 500000 %}{{ s.join(range(1000)) }}");
    assert_budget("{% set s = 'a' * 100000 %}{{ s | replace('', s) }}");
    assert_budget("{% set s = 'a' * 100000 %}{{ s.replace('a', s) }}");
    assert_budget("{{ ('x\n' * 300000) | indent(4000) }}");
    assert_budget("{{ '%999999999s' | format('x') }}");
    assert_budget("{{ '{:999999999}'.format('x') }}");
    assert_budget("{{ [1] | batch(1000000000000, 'x') }}");
    assert_budget("{{ [1] | tojson(indent=1000000000) }}");
    assert_budget("{% set s = 'a' * 1000000 %}{{ [s, s, s] | tojson }}");
    assert_budget("{% set s = 'a' * 1000000 %}{{ [s, s, s] | string }}");
    assert_budget("{% set s = 'a' * 1000000 %}{{ [s, s, s] }}");
}

#[test]
fn many_moderate_steps_hit_the_total() {
    // Each step is under the string limit; together they are not.
    assert_budget(
        "{% set s = 'a' * 1000000 %}{% for i in range(100000) %}{% set t = s ~ '' %}{% endfor %}",
    );
    assert_budget("{% set s = 'a' * 1000000 %}{% for i in range(100000) %}{% set t = s | upper %}{% endfor %}");
}

#[test]
fn output_is_bounded() {
    assert_budget("{% for i in range(100000) %}{{ 'a' * 1000 }}{% endfor %}");
}

#[test]
fn load_check_refuses_a_bomb_and_accepts_templates_that_raise() {
    let bomb = ChatTemplate::new(
        "{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        "",
        "",
    )
    .unwrap();
    let err = bomb.check_budget().unwrap_err();
    assert!(err.to_string().contains("budget"), "{err}");

    // Rejects a system role, as Mistral's templates do: still loads.
    let no_system = ChatTemplate::new(
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}{{ m.content }}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    no_system.check_budget().unwrap();
    // Rejects everything: still loads (the error comes per request, as before).
    let strict = ChatTemplate::new("{{ raise_exception('never') }}", "", "").unwrap();
    strict.check_budget().unwrap();
    ChatTemplate::chatml("", "")
        .unwrap()
        .check_budget()
        .unwrap();
}

#[test]
fn long_legitimate_conversations_still_render() {
    let t = ChatTemplate::chatml("", "").unwrap();
    // A 3 MiB message: the prompt limit grows with the conversation.
    let big = "word ".repeat(600_000);
    let out = t
        .render(&[ChatMessage::new("user", big.clone())], true, None)
        .unwrap();
    assert!(out.len() > big.len());
    // Many turns.
    let turns: Vec<ChatMessage> = (0..5000)
        .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, "hello there"))
        .collect();
    t.render(&turns, true, None).unwrap();
}

#[test]
fn vocabulary_bounds_are_enforced() {
    use lumen_engine::tokenizer::{GgufVocab, Tokenizer, VocabKind};
    let mut v = GgufVocab::new(VocabKind::Spm);
    v.tokens = vec!["a".into(), "x".repeat(5000)];
    let err = v.check_bounds().unwrap_err().to_string();
    assert!(err.contains("over the limit"), "{err}");
    // Many long tokens, each under the per-token limit: the merge derivation refuses.
    let mut v = GgufVocab::new(VocabKind::Spm);
    v.tokens = (0..100)
        .map(|i| format!("{i:04}{}", "y".repeat(4000)))
        .collect();
    let err = Tokenizer::from_vocab(v).unwrap_err().to_string();
    assert!(err.contains("too long"), "{err}");
}

#[test]
fn deep_values_and_long_tags() {
    // Values nested 400 000 deep: dropping them recursed past the stack (SIGABRT).
    assert_budget("{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% for j in range(100) %}{% set ns.l = [ns.l] %}{% endfor %}{% endfor %}x");
    // A tag with 20 000 operators parsed into a tree too deep to walk (SIGABRT).
    let long: &'static str =
        Box::leak(format!("{{{{ 'a'{} }}}}", " ~ 'a'".repeat(20000)).into_boxed_str());
    let err = ChatTemplate::new(long, "", "").unwrap_err();
    assert!(matches!(err, EngineError::TemplateBudget(_)), "{err:?}");
}
