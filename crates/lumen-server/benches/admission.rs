//! What admission and the ledger add to one request: key lookup (a cache hit), every limit
//! checked and debited, and the meter's drop (refund, slot freed, usage event queued for the
//! batch writer, which commits to the store meanwhile).
//!
//! `cargo bench -p lumen-server --bench admission`; prints p50, p99 and p99.9 in µs, first
//! on a SQLite file (limits in memory), then on a throwaway PostgreSQL cluster (limits in the
//! database: one round trip to admit, the release on a spawned task) when PostgreSQL is
//! installed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lumen_server::auth::ApiKeys;
use lumen_server::ledger::Ledger;
use lumen_server::tenancy::meter::EventInfo;
use lumen_server::tenancy::{RequestCtx, Tenancy};
use lumen_store::{KeyLimits, NewKey, Period, Store};
use lumen_testkit::pg::PgCluster;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("lumen-bench-admission-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sqlite = dir.join("lumen.db").to_string_lossy().into_owned();
    rt.block_on(run("sqlite", &sqlite, 40_000));
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(pg) = PgCluster::start() {
        let url = pg.create_database("bench");
        rt.block_on(run("postgres", &url, 10_000));
    }
}

async fn run(name: &str, url: &str, n: usize) {
    {
        let store = Store::open(url).await.expect("store");
        let (_, secret) = store
            .create_key(NewKey {
                name: "bench".into(),
                limits: KeyLimits {
                    rpm: Some(u32::MAX as u64),
                    tpm: Some(u64::MAX >> 2),
                    max_parallel: Some(1_000_000),
                    budget_tokens: Some(u64::MAX >> 2),
                    budget_period: Some(Period::Month),
                    max_priority: None,
                },
                ..NewKey::default()
            })
            .await
            .expect("key");
        let (ledger, task) = Ledger::start(store.clone());
        let t = Arc::new(Tenancy::new(
            ApiKeys::default(),
            ApiKeys::default(),
            Some(store.clone()),
            Some(ledger),
            true,
        ));
        let mut samples = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            let t0 = Instant::now();
            let principal = t.authenticate(Some(&secret)).await.expect("auth");
            let ctx = RequestCtx::new(principal);
            let mut meter = t
                .admit(
                    Some(&ctx),
                    500,
                    EventInfo {
                        request_id: format!("req-{i}"),
                        model: "m".into(),
                        endpoint: "chat.completions",
                        arrived: t0,
                    },
                )
                .await
                .expect("admitted");
            meter.set_usage(lumen_engine::Usage {
                prompt_tokens: 100,
                cached_prompt_tokens: 0,
                completion_tokens: 50,
            });
            meter.set_outcome(lumen_store::Outcome::Ok);
            drop(meter);
            samples.push(t0.elapsed());
            if i % 1000 == 999 {
                // Requests do not arrive back to back: let the writer run, as it would.
                tokio::task::yield_now().await;
            }
        }
        let total = start.elapsed();
        samples.sort();
        let q = |p: f64| samples[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1e6;
        println!(
            "{name}: admission + ledger per request: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs ({n} requests in {:.2} s)",
            q(0.5),
            q(0.99),
            q(0.999),
            total.as_secs_f64()
        );
        task.finish(Duration::from_secs(30)).await;
        let written = store
            .usage_events(0, 1, None)
            .await
            .map(|e| e.len())
            .unwrap_or(0);
        println!("ledger flushed: {}", if written > 0 { "yes" } else { "no" });
        store.close().await;
    }
}
