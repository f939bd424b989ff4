//! Scheduler limits and the weight layout from the command line, and the loader's settings
//! from the environment: values out of range are refused before anything loads, and good ones reach the engine, which still serves
//! concurrent prompts longer than one step's token budget, one sequence at a time, with its
//! weights in the packed layout.

mod common;

use std::process::Command;

#[test]
fn scheduler_limits_and_layout_from_flags() {
    for (flag, value) in [
        ("--max-num-batched-tokens", "0"),
        ("--max-num-batched-tokens", "70000"),
        ("--max-num-seqs", "0"),
        ("--max-num-seqs", "x"),
        ("--weight-layout", "fast"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lumen"))
            .args(["serve", "--port", "0", flag, value])
            .output()
            .expect("run lumen serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} must be refused");
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag}")),
            "{flag} {value}: {err}"
        );
    }

    // The loader's settings from the environment are refused as early.
    for (var, value) in [
        ("LUMEN_WEIGHTS_MEMORY", "sometimes"),
        ("LUMEN_PACKED_CACHE", "sometimes"),
        ("LUMEN_PACKED_CACHE_MAX", "lots"),
    ] {
        let err = refused(
            Command::new(env!("CARGO_BIN_EXE_lumen"))
                .args(["serve", "--port", "0"])
                .env(var, value),
        );
        assert!(
            err.contains(var) && err.contains(value),
            "{var}={value}: {err}"
        );
    }

    if common::prerequisites().is_none() {
        return;
    }
    let server = common::Server::start(&[
        "--max-num-batched-tokens",
        "8",
        "--max-num-seqs",
        "1",
        "--weight-layout",
        "packed",
    ]);
    let log = strip_ansi(&server.log());
    assert!(
        log.contains("max_num_batched_tokens=8")
            && log.contains("max_num_seqs=1")
            && log.contains("weight_layout=packed"),
        "{log}"
    );
    // The readiness polls that got 503 while the models loaded are not errors.
    assert!(!log.contains(" ERROR "), "{log}");

    // Two requests at once, each prompt several steps long: both complete, with the same
    // greedy answer, while only one sequence runs at a time.
    let body = format!(
        r#"{{"model":"{}","prompt":"The river ran past the old mill and the garden where the children played every summer, and","max_tokens":12,"temperature":0,"ignore_eos":true}}"#,
        common::MODEL
    );
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (port, body) = (server.port, body.clone());
            std::thread::spawn(move || {
                common::http_post_json(port, "/v1/completions", &body).expect("request")
            })
        })
        .collect();
    let answers: Vec<serde_json::Value> = threads
        .into_iter()
        .map(|t| {
            let (status, body) = t.join().expect("client thread");
            assert_eq!(status, 200, "{body}");
            serde_json::from_str(&body).expect("JSON body")
        })
        .collect();
    for a in &answers {
        assert!(a["usage"]["prompt_tokens"].as_u64().unwrap() > 8, "{a}");
        assert_eq!(a["usage"]["completion_tokens"], 12, "{a}");
    }
    assert_eq!(
        answers[0]["choices"][0]["text"],
        answers[1]["choices"][0]["text"]
    );
}

/// The log without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The stderr of `cmd`, which must exit unsuccessfully within a few seconds (a server that
/// accepted its settings would run on: it is stopped and the test fails).
fn refused(cmd: &mut Command) -> String {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lumen serve");
    let status = common::wait_with_timeout(&mut child, std::time::Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{cmd:?} started serving: the setting was not refused"));
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(!status.success(), "{cmd:?} exited successfully");
    err
}
