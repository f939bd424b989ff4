//! Two `lumen serve` processes on one throwaway PostgreSQL (`lumen_testkit::pg`): limits are
//! shared (a key with rpm 10 gets exactly 10 successes across both under 100 concurrent
//! requests), a key revoked through one is refused by the other within a second, and the
//! usage both record shows in one report.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{body, http_with_key, status, Server, StartOptions, ADMIN_KEY};
use lumen_testkit::pg::PgCluster;

fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let head = raw.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Creates a key through `server`'s admin API: (id, secret).
fn new_key(server: &Server, body_json: &str) -> (String, String) {
    let r = http_with_key(server.port, ADMIN_KEY, "POST", "/admin/keys", body_json);
    assert_eq!(status(&r), 200, "{r}");
    let k = body(&r);
    (
        k["id"].as_str().expect("id").to_string(),
        k["key"].as_str().expect("secret").to_string(),
    )
}

const CHAT: &str =
    r#"{"model":"smollm2","messages":[{"role":"user","content":"Say hi"}],"max_tokens":2}"#;

#[test]
fn two_servers_on_one_postgres_share_limits_revocation_and_usage() {
    if lumen_testkit::chat_gguf().is_none() || lumen_testkit::embedding_dir().is_none() {
        return;
    }
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.create_database("replicas");
    let opts = StartOptions {
        database: Some(PathBuf::from(&url)),
        ..StartOptions::default()
    };
    let servers = [
        Arc::new(Server::start_with(&[], &opts)),
        Arc::new(Server::start_with(&[], &opts)),
    ];
    let [a, b] = &servers;

    // rpm 10, 100 concurrent requests, half to each server: exactly 10 succeed in all.
    let (limited_id, limited) = new_key(a, r#"{"name":"shared-rpm","rpm":10}"#);
    let gate = Arc::new(Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let server = servers[i % 2].clone();
            let (gate, key) = (gate.clone(), limited.clone());
            std::thread::spawn(move || {
                gate.wait();
                (
                    i % 2,
                    http_with_key(server.port, &key, "POST", "/v1/chat/completions", CHAT),
                )
            })
        })
        .collect();
    let results: Vec<(usize, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for (_, r) in &results {
        *by_status.entry(status(r)).or_default() += 1;
    }
    assert_eq!(
        (by_status.get(&200), by_status.get(&429)),
        (Some(&10), Some(&90)),
        "{by_status:?}"
    );
    for (_, r) in results.iter().filter(|(_, r)| status(r) == 429) {
        let e = &body(r)["error"];
        assert_eq!(e["code"], "rate_limit_exceeded", "{r}");
        assert!(header(r, "retry-after-ms").is_some_and(|v| v.parse::<u64>().unwrap_or(0) > 0));
        assert_eq!(header(r, "x-ratelimit-limit-requests"), Some("10"));
        assert_eq!(header(r, "x-ratelimit-remaining-requests"), Some("0"));
    }
    let mut sent = [(0u64, 0u64, 0u64); 2];
    for (server, r) in results.iter().filter(|(_, r)| status(r) == 200) {
        let u = &body(r)["usage"];
        sent[*server].0 += 1;
        sent[*server].1 += u["prompt_tokens"].as_u64().unwrap();
        sent[*server].2 += u["completion_tokens"].as_u64().unwrap();
    }

    // Usage recorded by both servers shows in one report, whichever server is asked: an
    // unlimited key used on each, and the rpm key's ten successes wherever they ran.
    let (_, free) = new_key(b, r#"{"name":"shared-usage"}"#);
    for (i, s) in servers.iter().enumerate() {
        let r = http_with_key(s.port, &free, "POST", "/v1/chat/completions", CHAT);
        assert_eq!(status(&r), 200, "{r}");
        let u = &body(&r)["usage"];
        sent[i].0 += 1;
        sent[i].1 += u["prompt_tokens"].as_u64().unwrap();
        sent[i].2 += u["completion_tokens"].as_u64().unwrap();
    }
    let total = (
        sent[0].0 + sent[1].0,
        sent[0].1 + sent[1].1,
        sent[0].2 + sent[1].2,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http_with_key(
            b.port,
            ADMIN_KEY,
            "GET",
            "/admin/usage?bucket_width=1d&limit=1",
            "",
        );
        assert_eq!(status(&r), 200, "{r}");
        let page = body(&r);
        let got = page["data"][0]["results"]
            .as_array()
            .and_then(|rs| rs.first())
            .map(|x| {
                (
                    x["num_model_requests"].as_u64().unwrap_or(0),
                    x["input_tokens"].as_u64().unwrap_or(0),
                    x["output_tokens"].as_u64().unwrap_or(0),
                )
            });
        if got == Some(total) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "report {got:?}, clients saw {total:?} (per server {sent:?}): {page}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = http_with_key(
        a.port,
        ADMIN_KEY,
        "GET",
        &format!("/admin/keys/{limited_id}"),
        "",
    );
    assert_eq!(body(&r)["in_flight"], 0, "every shared slot came back: {r}");

    // Revoked through one server, refused by the other within a second.
    let (id, secret) = new_key(a, r#"{"name":"shared-revoke"}"#);
    let r = http_with_key(b.port, &secret, "GET", "/v1/models", "");
    assert_eq!(status(&r), 200, "b caches the key: {r}");
    let r = http_with_key(
        a.port,
        ADMIN_KEY,
        "DELETE",
        &format!("/admin/keys/{id}"),
        "",
    );
    assert_eq!(status(&r), 200, "{r}");
    let revoked = Instant::now();
    loop {
        let r = http_with_key(b.port, &secret, "GET", "/v1/models", "");
        if status(&r) == 401 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "b still accepts the key {:?} after a revoked it",
            revoked.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(servers);
}

/// The whole tenancy suite (`tests/e2e/test_tenancy.py`, official `openai` client) against a
/// server on PostgreSQL, whose limits are the shared ones: rpm, tpm refunds, 500 aborted
/// streams under `max_parallel`, budgets, revocation, usage and cost reports. Only the check
/// that grep's SQLite's files for secrets is left out (there is no file to read).
#[test]
fn the_tenancy_suite_passes_on_postgres() {
    let Some(python) = common::prerequisites() else {
        return;
    };
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.create_database("tenancy");
    let server = Server::start_with(
        // The prices test_tenancy.py's PRICES expects.
        &[
            "--price",
            "smollm2=2:10",
            "--price",
            "all-minilm-l6-v2=0.5:0",
        ],
        &StartOptions {
            database: Some(PathBuf::from(&url)),
            ..StartOptions::default()
        },
    );
    server.pytest_with(
        &python,
        "test_tenancy.py",
        &["-k", "not database_holds_no_plaintext_secret"],
        &[],
        Duration::from_secs(300),
    );
}
