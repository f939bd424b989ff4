//! Models on demand, end to end: the real `lumen serve` over a `LUMEN_HOME` holding two chat
//! models and two embedding models (links to the default models' folders under other names;
//! the first test adds all-mpnet-base-v2, a second embedding architecture), none listed on
//! the command line, none preloaded.
//!
//! Covered: every installed model served by name and loaded on its first request, aliases in
//! `/v1/models` and in requests, `keep_alive` of one second (and zero, and forever), the
//! load timeout's 503, the memory budget evicting the idle model and answering 503 naming the
//! busy one, requests racing unloads (200 or a clean 503, never a 500 or a hang), and 200
//! load/unload cycles leaving RSS within 10 %.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{http, http_get, http_post_json, Server, StartOptions};

use serde_json::{json, Value};

/// A `LUMEN_HOME` whose `models/` holds `chat-a`, `chat-b` (the chat model) and `emb-a`,
/// `emb-b` (the embedding model), as symbolic links to the installed folders.
fn home(tag: &str) -> Option<PathBuf> {
    home_with(tag, &[])
}

/// [`home`] plus `extra` models (name, installed folder).
fn home_with(tag: &str, extra: &[(&str, PathBuf)]) -> Option<PathBuf> {
    let chat = lumen_testkit::chat_gguf()?.parent()?.to_path_buf();
    let emb = lumen_testkit::embedding_dir()?;
    let home = std::env::temp_dir().join(format!("lumen-on-demand-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let models = home.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let links = [
        ("chat-a", &chat),
        ("chat-b", &chat),
        ("emb-a", &emb),
        ("emb-b", &emb),
    ];
    for (name, target) in links.into_iter().chain(extra.iter().map(|(n, t)| (*n, t))) {
        std::os::unix::fs::symlink(target, models.join(name)).unwrap();
    }
    Some(home)
}

/// The mpnet fixture's embedding of "Hello world" (sentence-transformers').
fn mpnet_hello_world() -> Vec<f64> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../lumen-models/tests/fixtures/mpnet_reference.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let s = &doc["sentences"][0];
    assert_eq!(s["text"], "Hello world");
    s["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn start(home: &std::path::Path, extra: &[&str]) -> Server {
    let mut flags = vec!["--kv-cache-mb", "16"];
    flags.extend_from_slice(extra);
    Server::start_with(
        &flags,
        &StartOptions {
            home: Some(home.to_path_buf()),
            ..StartOptions::default()
        },
    )
}

fn chat(port: u16, model: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, text) =
        http_post_json(port, "/v1/chat/completions", &body.to_string()).expect("chat request");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn embed(port: u16, model: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"model": model, "input": ["hello world", "models on demand"]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, text) =
        http_post_json(port, "/v1/embeddings", &body.to_string()).expect("embeddings request");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// [`embed`], retried while the model is still loading (a 503 `model_loading` under a tiny
/// `--load-timeout`); the last status.
fn embed_served(port: u16, model: &str, extra: Value) -> u16 {
    let start = Instant::now();
    loop {
        let (status, body) = embed(port, model, extra.clone());
        if status != 503 || start.elapsed() > Duration::from_secs(30) {
            return status;
        }
        assert_eq!(body["error"]["code"], "model_loading", "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `id -> lumen_state` from `/v1/models`.
fn states(port: u16) -> Vec<(String, String)> {
    let raw = http(port, "GET", "/v1/models", "");
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: Value = serde_json::from_str(body).expect("models json");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["lumen_state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn state_of(port: u16, id: &str) -> String {
    states(port)
        .into_iter()
        .find(|(i, _)| i == id)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

/// One field of one model in `/admin/models`.
fn admin_field(port: u16, id: &str, field: &str) -> Value {
    let raw = http(port, "GET", "/admin/models", "");
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == id))
        .map(|m| m[field].clone())
        .unwrap_or(Value::Null)
}

fn wait_state(port: u16, id: &str, want: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if state_of(port, id) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn every_installed_model_loads_on_first_request_and_aliases_resolve() {
    // The two BERT copies and the MPNet model (a different architecture) side by side.
    const MPNET: &str = lumen_testkit::MPNET_MODEL;
    let Some(mpnet) = lumen_testkit::mpnet_dir() else {
        return;
    };
    let Some(home) = home_with("serve", &[(MPNET, mpnet)]) else {
        return;
    };
    let server = start(&home, &["--alias", "gpt-4o-mini=chat-a"]);
    let port = server.port;
    let before = states(port);
    assert_eq!(
        before,
        [MPNET, "chat-a", "chat-b", "emb-a", "emb-b", "gpt-4o-mini"]
            .iter()
            .map(|m| (m.to_string(), "unloaded".to_string()))
            .collect::<Vec<_>>(),
        "every installed model and the alias, none loaded"
    );
    for m in ["chat-a", "chat-b"] {
        let (status, body) = chat(port, m, json!({}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], m);
    }
    for (m, dims) in [("emb-a", 384), (MPNET, 768), ("emb-b", 384)] {
        let (status, body) = embed(port, m, json!({}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["data"][0]["embedding"].as_array().map(Vec::len),
            Some(dims),
            "{m}"
        );
    }
    // MPNet's vector is sentence-transformers' (its tokenizer lower-cases "Hello world").
    let (status, body) = embed(port, MPNET, json!({"input": "Hello world"}));
    assert_eq!(status, 200, "{body}");
    let got: Vec<f64> = body["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let c = cosine(&got, &mpnet_hello_world());
    assert!(c >= 0.9999, "cosine {c} against sentence-transformers");
    assert_eq!(body["usage"]["prompt_tokens"], 4, "<s> hello world </s>");
    let (status, body) = chat(port, "gpt-4o-mini", json!({}));
    assert_eq!(
        (status, body["model"].as_str()),
        (200, Some("chat-a")),
        "{body}"
    );
    assert!(
        states(port).iter().all(|(_, s)| s == "loaded"),
        "{:?}",
        states(port)
    );
    let alias = http(port, "GET", "/v1/models/gpt-4o-mini", "");
    assert!(alias.contains("\"lumen_alias_of\":\"chat-a\""), "{alias}");
    // The wrong kind is a 400, an unknown model a 404.
    assert_eq!(embed(port, "gpt-4o-mini", json!({})).0, 400);
    assert_eq!(chat(port, "nope", json!({})).0, 404);
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    for m in ["chat-a", "chat-b", "emb-a", "emb-b", MPNET] {
        assert!(
            metrics.contains(&format!("lumen:model_loaded{{model_name=\"{m}\"}} 1")),
            "{m}"
        );
        assert!(
            metrics.contains(&format!(
                "lumen:model_load_duration_seconds_count{{model_name=\"{m}\"}} 1"
            )),
            "{m}"
        );
    }
    let admin = http(port, "GET", "/admin/models", "");
    assert!(
        admin.starts_with("HTTP/1.1 200")
            && admin.contains("lumen_kv_usage")
            && admin.contains("lumen_idle_seconds"),
        "{admin}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn keep_alive_unloads_idle_models_and_load_timeout_answers_503() {
    let Some(home) = home("keep") else { return };
    let server = start(&home, &["--load-timeout", "0.02"]);
    let port = server.port;
    // A chat model takes far longer than 20 ms to load: the waiter gets a clean 503...
    let (status, body) = chat(port, "chat-a", json!({"keep_alive": 1}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("model_loading")),
        "{body}"
    );
    // ...and the load goes on, so a retry is served.
    assert!(wait_state(
        port,
        "chat-a",
        "loaded",
        Duration::from_secs(60)
    ));
    let (status, _) = chat(port, "chat-a", json!({"keep_alive": 1}));
    assert_eq!(status, 200);
    assert_eq!(state_of(port, "chat-a"), "loaded");
    assert!(
        wait_state(port, "chat-a", "unloaded", Duration::from_secs(5)),
        "not unloaded after a 1 s keep_alive"
    );
    // 0 unloads as soon as the request is done; -1 (as a duration string) keeps it.
    assert!(wait_state(
        port,
        "emb-a",
        "unloaded",
        Duration::from_secs(1)
    ));
    assert_eq!(embed_served(port, "emb-a", json!({})), 200);
    assert_eq!(state_of(port, "emb-a"), "loaded");
    assert_eq!(embed(port, "emb-a", json!({"keep_alive": 0})).0, 200);
    assert!(wait_state(
        port,
        "emb-a",
        "unloaded",
        Duration::from_secs(3)
    ));
    assert_eq!(
        embed_served(port, "emb-b", json!({"keep_alive": "-1m"})),
        200
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(state_of(port, "emb-b"), "loaded");
    let (status, body) = embed(port, "emb-b", json!({"keep_alive": "soon"}));
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("keep_alive")),
        "{body}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn memory_budget_evicts_the_idle_model_and_names_busy_ones() {
    let Some(home) = home("budget") else { return };
    // One chat model (~95 MiB of weights + 16 MiB of KV) fits in 160 MiB, two do not.
    let server = start(&home, &["--max-memory", "160MiB"]);
    let port = server.port;
    assert_eq!(chat(port, "chat-a", json!({})).0, 200);
    assert_eq!(state_of(port, "chat-a"), "loaded");
    assert_eq!(chat(port, "chat-b", json!({})).0, 200);
    assert!(
        wait_state(port, "chat-a", "unloaded", Duration::from_secs(5)),
        "the idle model was not evicted"
    );
    assert_eq!(state_of(port, "chat-b"), "loaded");
    // While chat-b is busy with a long generation, chat-a cannot be loaded: 503 naming chat-b.
    let long = std::thread::spawn(move || {
        chat(
            port,
            "chat-b",
            json!({"max_tokens": 400, "ignore_eos": true}),
        )
    });
    let start = Instant::now();
    while admin_field(port, "chat-b", "lumen_busy") != json!(true) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chat-b never busy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = chat(port, "chat-a", json!({}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("insufficient_memory")),
        "{body}"
    );
    let msg = body["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("chat-b") && msg.contains("busy"), "{msg}");
    let (status, body) = long.join().unwrap();
    assert_eq!(
        status, 200,
        "the busy model was unloaded under its request: {body}"
    );
    assert_eq!(state_of(port, "chat-b"), "loaded");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn requests_racing_unloads_are_served_or_get_a_clean_503() {
    let Some(home) = home("race") else { return };
    let server = start(&home, &[]);
    let port = server.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let unloader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for m in ["emb-a", "chat-a"] {
                    let raw = http(port, "POST", &format!("/admin/models/{m}/unload"), "");
                    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(15));
            }
            n
        })
    };
    let clients: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for _ in 0..12 {
                    let (status, body) = if i % 2 == 0 {
                        embed(port, "emb-a", json!({"keep_alive": 0}))
                    } else {
                        chat(port, "chat-a", json!({"max_tokens": 2, "keep_alive": 0}))
                    };
                    assert!(
                        status == 200 || (status == 503 && body["error"]["code"].is_string()),
                        "{status} {body}"
                    );
                    seen.push(status);
                }
                seen
            })
        })
        .collect();
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("a client failed"))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let unloads = unloader.join().expect("unloader failed");
    let served = statuses.iter().filter(|&&s| s == 200).count();
    assert!(served > 0, "nothing served: {statuses:?}");
    assert!(unloads > 5, "only {unloads} unload rounds");
    assert!(
        !server.log().contains("request failed"),
        "a 5xx other than 503 was logged"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn two_hundred_load_unload_cycles_do_not_leak() {
    let Some(home) = home("cycles") else { return };
    let server = start(&home, &[]);
    let port = server.port;
    let models = ["chat-a", "emb-a"];
    // One cycle: load both models, read RSS while they are loaded, unload both, read RSS.
    let cycle = || {
        for m in models {
            let raw = http(port, "POST", &format!("/admin/models/{m}/load"), "");
            assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        }
        let loaded = server.proc_status_kib("VmRSS").expect("VmRSS");
        for m in models {
            let raw = http(port, "POST", &format!("/admin/models/{m}/unload"), "");
            assert!(
                raw.starts_with("HTTP/1.1 200") && raw.contains("\"lumen_unloaded\":true"),
                "{raw}"
            );
        }
        for m in models {
            assert!(wait_state(port, m, "unloaded", Duration::from_secs(10)));
        }
        let threads = server.proc_status_kib("Threads").expect("Threads");
        (
            loaded,
            server.proc_status_kib("VmRSS").expect("VmRSS"),
            threads,
        )
    };
    let (loaded_first, unloaded_first, threads_first) = cycle();
    let started = Instant::now();
    let mut last = (0, 0, 0);
    for _ in 0..200 {
        last = cycle();
    }
    let (loaded_last, unloaded_last, threads_last) = last;
    eprintln!(
        "VmRSS with both models loaded: {loaded_first} KiB at the first cycle, {loaded_last} KiB at the 201st ({:+.1} %); \
         unloaded: {unloaded_first} KiB, then {unloaded_last} KiB; threads unloaded: {threads_first}, then {threads_last}; 200 cycles in {:.1} s",
        (loaded_last as f64 / loaded_first as f64 - 1.0) * 100.0,
        started.elapsed().as_secs_f64()
    );
    // Each load starts engine and compute threads: a cycle that left one behind would show
    // 200 more here (the runtime's idle blocking threads come and go by a few).
    assert!(
        threads_last <= threads_first + 4,
        "threads after unloading went from {threads_first} to {threads_last}"
    );
    // A leak of anything a load allocates (weights, KV cache, engine threads, buffers)
    // accumulates over 200 cycles; allocator noise does not reach 10 %.
    assert!(
        (loaded_last as f64) <= loaded_first as f64 * 1.10,
        "RSS with the models loaded grew from {loaded_first} KiB to {loaded_last} KiB"
    );
    // Unloading really frees the weights: well over half of what loading took comes back.
    let weights = loaded_first.saturating_sub(unloaded_first);
    assert!(
        weights > 50 * 1024 && unloaded_last < unloaded_first + weights / 2,
        "unloading does not free memory: loaded {loaded_last} KiB, unloaded {unloaded_last} KiB (first {unloaded_first} KiB)"
    );
    let _ = std::fs::remove_dir_all(&home);
}
