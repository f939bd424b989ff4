//! The store against real databases: every case runs on a SQLite file and on a throwaway
//! PostgreSQL cluster (`lumen_testkit::pg`), so both backends pass the same assertions; the
//! shared admission cases run on PostgreSQL only (SQLite has no shared state).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lumen_store::admission::{SharedDecision, SharedSubject};
use lumen_store::usage::MAX_EVENTS_PAGE;
use lumen_store::*;
use lumen_testkit::pg::PgCluster;

/// Each case once per backend: one `#[tokio::test]` per case on SQLite, and one test that
/// starts a PostgreSQL cluster and runs every case in a database of its own.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let path = super::tmp_db(stringify!($case));
                    let store = lumen_store::Store::open(&path.to_string_lossy()).await.unwrap();
                    super::$case(store, Some(path.clone())).await;
                    let _ = std::fs::remove_dir_all(path.parent().unwrap());
                }
            )*
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn postgres() {
            let Some(pg) = PgCluster::start() else { return };
            $(
                let url = pg.create_database(stringify!($case));
                $case(Store::open(&url).await.unwrap(), None).await;
            )*
            let url = pg.create_database("shared_admission");
            shared_admission(&url).await;
            let url = pg.create_database("shared_leases");
            shared_leases(&url).await;
        }
    };
}

on_both_backends!(keys_and_tenants, events_roll_up_into_reports_and_budgets);

fn tmp_db(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lumen-store-{tag}-{}-{}",
        std::process::id(),
        lumen_store::secret::random_hex(4)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("lumen.db")
}

fn event(key: &str, model: &str, at_ms: u64, p: u64, c: u64) -> UsageEvent {
    UsageEvent {
        request_id: format!("req-{at_ms}-{p}-{c}"),
        created_at_ms: at_ms,
        key_id: key.into(),
        tenant_id: String::new(),
        model: model.into(),
        endpoint: "chat.completions".into(),
        prompt_tokens: p,
        cached_tokens: 1,
        completion_tokens: c,
        status: Outcome::Ok,
        latency_ms: 5,
        ttft_ms: Some(2),
        compute_us: 1500,
        batch: None,
    }
}

/// Keys and tenants; on SQLite (`file` set) the file holds no plaintext secret.
async fn keys_and_tenants(store: Store, file: Option<PathBuf>) {
    assert!(!store.any_active_key().await.unwrap());
    let t = store
        .create_tenant(
            "acme",
            KeyLimits {
                rpm: Some(3),
                ..KeyLimits::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        store.create_tenant("acme", KeyLimits::default()).await,
        Err(StoreError::Conflict(_))
    ));
    // Concurrent creates of one name: one wins, the rest are conflicts (not database errors).
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.create_tenant("race", KeyLimits::default()).await })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    let (key, secret) = store
        .create_key(NewKey {
            name: "ci".into(),
            tenant: Some("acme".into()),
            models: Some(vec!["smollm2".into()]),
            limits: KeyLimits {
                rpm: Some(10),
                budget_tokens: Some(1000),
                ..KeyLimits::default()
            },
            ..NewKey::default()
        })
        .await
        .unwrap();
    assert!(secret.starts_with("sk-lumen-"));
    assert_eq!(key.tenant.as_deref(), Some(t.id.as_str()));
    assert_eq!(key.role, Role::User);
    assert_eq!(
        key.limits.budget_period,
        Some(Period::Month),
        "default period"
    );
    assert!(key.allows_model("smollm2") && !key.allows_model("other"));
    assert!(store.any_active_key().await.unwrap());
    let found = store.key_by_secret(&secret).await.unwrap().unwrap();
    assert_eq!(found.tenant_limits.as_ref().and_then(|l| l.rpm), Some(3));
    assert_eq!(found.id, key.id);
    assert_eq!(store.key_by_secret("sk-lumen-nope").await.unwrap(), None);

    // Validation before the database.
    for bad in [
        NewKey::default(),
        NewKey {
            name: "x".into(),
            limits: KeyLimits {
                rpm: Some(0),
                ..KeyLimits::default()
            },
            ..NewKey::default()
        },
        NewKey {
            name: "x".into(),
            tenant: Some("nobody".into()),
            ..NewKey::default()
        },
    ] {
        assert!(store.create_key(bad).await.is_err());
    }

    let patched = store
        .update_key(
            &key.id,
            KeyPatch {
                rpm: Some(None),
                tpm: Some(Some(500)),
                models: Some(None),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((patched.limits.rpm, patched.limits.tpm), (None, Some(500)));
    assert!(patched.models.is_none());

    let (rotated, new_secret) = store.rotate_key(&key.id).await.unwrap();
    assert_eq!(rotated.id, key.id);
    assert_eq!(
        store.key_by_secret(&secret).await.unwrap(),
        None,
        "old secret dead"
    );
    assert!(store.key_by_secret(&new_secret).await.unwrap().is_some());

    let revoked = store.revoke_key(&key.id).await.unwrap();
    assert!(revoked.revoked && !revoked.is_active(0));
    assert!(!store.any_active_key().await.unwrap());
    assert!(store.rotate_key(&key.id).await.is_err());
    assert_eq!(store.list_keys(None).await.unwrap().len(), 1);
    let t = store
        .set_tenant_limits(
            "acme",
            KeyLimits {
                budget_tokens: Some(50),
                ..KeyLimits::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (t.limits.rpm, t.limits.budget_period),
        (None, Some(Period::Month))
    );
    let tenants = store.list_tenants().await.unwrap();
    assert_eq!(tenants.len(), 2);
    assert!(tenants.contains(&t));
    store.close().await;

    // The secret appears nowhere in the database files (WAL included).
    let Some(path) = file else { return };
    for f in ["lumen.db", "lumen.db-wal", "lumen.db-shm"] {
        if let Ok(bytes) = std::fs::read(path.with_file_name(f)) {
            for s in [&secret, &new_secret] {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "{f} holds a secret"
                );
            }
        }
    }
}

/// Rollups, reports (with compute time and prices), event pages and pruning.
async fn events_roll_up_into_reports_and_budgets(store: Store, _file: Option<PathBuf>) {
    let day = 86_400 * 20_000; // a day boundary, Unix seconds
    let ms = |s: u64| s * 1000;
    store
        .record(&[
            event("key_a", "m1", ms(day + 10), 10, 5),
            event("key_a", "m2", ms(day + 70), 20, 7),
            event("key_b", "m1", ms(day + 3700), 1, 1),
        ])
        .await
        .unwrap();
    store
        .record(&[event("key_a", "m1", ms(day + 86_400 + 5), 100, 0)])
        .await
        .unwrap();

    assert_eq!(
        store.tokens_used("key_a", day, day + 86_400).await.unwrap(),
        42
    );
    assert_eq!(
        store
            .tenant_tokens_used("", day, day + 86_400)
            .await
            .unwrap(),
        44,
        "the events' (empty) tenant"
    );
    assert_eq!(
        store
            .tokens_used("key_a", day, day + 2 * 86_400)
            .await
            .unwrap(),
        142
    );

    let q = UsageQuery {
        start_time: day,
        end_time: day + 2 * 86_400,
        width: Width::Day,
        group_by: GroupBy::default(),
        key_id: None,
        limit: 7,
        prices: BTreeMap::new(),
    };
    let page = store.usage_report(&q).await.unwrap();
    assert_eq!(page.data.len(), 2);
    let r = &page.data[0].results[0];
    assert_eq!(
        (
            r.input_tokens,
            r.output_tokens,
            r.input_cached_tokens,
            r.num_model_requests
        ),
        (31, 13, 3, 3)
    );
    assert_eq!(r.compute_ms, 4.5, "three events of 1.5 ms");
    assert_eq!(r.cost, None, "no prices, no cost");

    // Prices per model: the cost is each model's tokens times its price, summed; a model
    // without a price adds nothing.
    let priced = UsageQuery {
        prices: BTreeMap::from([(
            "m1".to_string(),
            Price {
                input: 2.0,
                output: 10.0,
            },
        )]),
        ..q.clone()
    };
    let page = store.usage_report(&priced).await.unwrap();
    let r = &page.data[0].results[0];
    assert_eq!(r.num_model_requests, 3, "folded back into one row");
    let want = (11.0 * 2.0 + 6.0 * 10.0) / 1e6;
    assert!((r.cost.unwrap() - want).abs() < 1e-15, "{:?}", r.cost);

    // Minute buckets, grouped by key and model, one key only; empty buckets are listed.
    let q = UsageQuery {
        width: Width::Minute,
        end_time: day + 180,
        group_by: GroupBy {
            api_key_id: true,
            model: true,
            tenant: false,
        },
        key_id: Some("key_a".into()),
        ..q.clone()
    };
    let page = store.usage_report(&q).await.unwrap();
    assert_eq!(page.data.len(), 3);
    assert_eq!(page.data[0].results[0].model.as_deref(), Some("m1"));
    assert_eq!(page.data[1].results[0].model.as_deref(), Some("m2"));
    assert!(page.data[2].results.is_empty());
    assert!(!page.has_more);
    let limited = store
        .usage_report(&UsageQuery {
            limit: 2,
            ..q.clone()
        })
        .await
        .unwrap();
    assert!(limited.has_more);
    assert_eq!(limited.next_page, Some((day + 120).to_string()));

    let all = store.usage_events(0, MAX_EVENTS_PAGE, None).await.unwrap();
    assert_eq!(all.len(), 4);
    let page2 = store
        .usage_events(all[1].id, 2, Some("key_a"))
        .await
        .unwrap();
    assert_eq!(page2.len(), 1, "key_b's event is filtered out");
    assert_eq!(page2[0].event.compute_us, 1500);
    // Events of one key, model and minute in one batch fold into one rollup row.
    let t = day + 10 * 86_400;
    store
        .record(&[
            event("key_c", "m1", ms(t), 3, 4),
            event("key_c", "m1", ms(t + 1), 5, 6),
        ])
        .await
        .unwrap();
    let page = store
        .usage_report(&UsageQuery {
            start_time: t,
            end_time: t + 60,
            width: Width::Minute,
            key_id: Some("key_c".into()),
            ..q.clone()
        })
        .await
        .unwrap();
    let r = &page.data[0].results[0];
    assert_eq!(
        (
            r.num_model_requests,
            r.input_tokens,
            r.output_tokens,
            r.input_cached_tokens
        ),
        (2, 8, 10, 2)
    );
    assert_eq!(r.compute_ms, 3.0);
    assert_eq!(store.prune_events(ms(day + 86_400)).await.unwrap(), 3);
    assert_eq!(
        store.tokens_used("key_a", day, day + 86_400).await.unwrap(),
        42,
        "rollups survive pruning"
    );
}

fn subject(id: &str, kind: &'static str) -> SharedSubject {
    SharedSubject {
        id: id.into(),
        kind,
        rpm: None,
        tpm: None,
        max_parallel: None,
        budget: None,
        budget_start: None,
        budget_end: None,
    }
}

/// `n` admissions of `cost` at once, spread over `stores` (replicas); the decisions.
async fn burst(
    stores: &[Store],
    subjects: Vec<SharedSubject>,
    n: usize,
    cost: u64,
) -> Vec<(String, SharedDecision)> {
    let subjects = Arc::new(subjects);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let subjects = subjects.clone();
            tokio::spawn(async move {
                let id = format!("grant-{i}-{}", lumen_store::secret::random_hex(4));
                let d = store.admit_shared(&subjects, &id, cost).await.unwrap();
                (id, d)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Two pools on one database stand for two servers: limits hold across them.
async fn shared_admission(url: &str) {
    let a = Store::open(url).await.unwrap();
    let b = Store::open(url).await.unwrap();
    let stores = [a.clone(), b.clone()];

    // Requests per minute: exactly rpm of 100 concurrent requests over both.
    let mut key = subject("key_rpm", "key");
    key.rpm = Some(10);
    let got = burst(&stores, vec![key.clone()], 100, 1).await;
    let ok = got.iter().filter(|(_, d)| d.ok).count();
    assert_eq!(ok, 10);
    let refused = got.iter().find(|(_, d)| !d.ok).unwrap();
    let r = refused.1.refusal.as_ref().unwrap();
    assert_eq!((r.reason.as_str(), r.limit), ("rpm", 10));
    assert!(r.wait_us > 0 && r.wait_us <= 6_000_000, "{r:?}");
    assert_eq!(refused.1.rpm.unwrap().remaining, 0);
    for (id, d) in &got {
        if d.ok {
            assert_eq!(a.release_shared(id, 1, 1, &[]).await.unwrap(), 0);
        }
    }

    // Parallel slots: two at a time; a release frees one for the other replica.
    let mut key = subject("key_par", "key");
    key.max_parallel = Some(2);
    let got = burst(&stores, vec![key.clone()], 20, 5).await;
    let held: Vec<_> = got.iter().filter(|(_, d)| d.ok).collect();
    assert_eq!(held.len(), 2);
    assert_eq!(b.shared_in_flight("key_par").await.unwrap(), 2);
    assert!(!a.admit_shared(&[key.clone()], "x1", 5).await.unwrap().ok);
    assert_eq!(b.release_shared(&held[0].0, 5, 5, &[]).await.unwrap(), 1);
    assert!(a.admit_shared(&[key.clone()], "x2", 5).await.unwrap().ok);

    // A tenant's limit binds its keys on every replica, and a refusal debits nothing.
    let mut k1 = subject("key_t1", "key");
    k1.rpm = Some(100);
    let k2 = subject("key_t2", "key");
    let mut tenant = subject("tnt_shared", "tenant");
    tenant.max_parallel = Some(1);
    assert!(
        a.admit_shared(&[k1.clone(), tenant.clone()], "t1", 1)
            .await
            .unwrap()
            .ok
    );
    let d = b
        .admit_shared(&[k2.clone(), tenant.clone()], "t2", 1)
        .await
        .unwrap();
    let r = d.refusal.unwrap();
    assert_eq!((r.subject, r.reason.as_str()), (1, "parallel"));
    let d = a.admit_shared(&[k1.clone()], "t3", 1).await.unwrap();
    assert_eq!(d.rpm.unwrap().remaining, 98, "t1 and t3 only");
    assert_eq!(d.held, 0, "per-minute limits alone hold no grant rows");
    a.release_shared("t1", 1, 1, &[]).await.unwrap();
    assert!(
        b.admit_shared(&[k2.clone(), tenant.clone()], "t4", 1)
            .await
            .unwrap()
            .ok
    );

    // Tokens per minute: a bucket of 1000 admits two of 450; a refund admits the next.
    let mut key = subject("key_tpm", "key");
    key.tpm = Some(1000);
    let got = burst(&stores, vec![key.clone()], 10, 450).await;
    let ok: Vec<_> = got.iter().filter(|(_, d)| d.ok).collect();
    assert_eq!(ok.len(), 2);
    let r = got
        .iter()
        .find(|(_, d)| !d.ok)
        .unwrap()
        .1
        .refusal
        .clone()
        .unwrap();
    assert_eq!(r.reason, "tpm");
    b.release_shared(&ok[0].0, 50, 450, &[("key_tpm".into(), 1000)])
        .await
        .unwrap();
    assert!(
        a.admit_shared(&[key.clone()], "tpm-next", 450)
            .await
            .unwrap()
            .ok
    );

    // Budget: reservations of the worst case never overshoot; what was used stays spent.
    let day = 86_400 * 20_000;
    let mut key = subject("key_budget", "key");
    key.budget = Some(1000);
    key.budget_start = Some(day);
    key.budget_end = Some(day + 86_400);
    let got = burst(&stores, vec![key.clone()], 10, 300).await;
    let ok: Vec<_> = got.iter().filter(|(_, d)| d.ok).collect();
    assert_eq!(ok.len(), 3);
    let r = got
        .iter()
        .find(|(_, d)| !d.ok)
        .unwrap()
        .1
        .refusal
        .clone()
        .unwrap();
    assert_eq!((r.reason.as_str(), r.reserved), ("budget", 900));
    for (id, _) in &ok {
        a.release_shared(id, 100, 300, &[]).await.unwrap();
    }
    assert!(
        b.admit_shared(&[key.clone()], "b-700", 700)
            .await
            .unwrap()
            .ok
    );
    assert!(!b.admit_shared(&[key.clone()], "b-1", 1).await.unwrap().ok);
    // The next period starts from the ledger's rollups (empty here): a fresh budget.
    key.budget_start = Some(day + 86_400);
    key.budget_end = Some(day + 2 * 86_400);
    assert!(
        a.admit_shared(&[key.clone()], "b-next", 1000)
            .await
            .unwrap()
            .ok
    );
    a.close().await;
    b.close().await;
}

/// A server that dies without releasing: its slots come back when the lease runs out, and
/// a live server's renewals keep its own.
async fn shared_leases(url: &str) {
    let lease = Duration::from_millis(1500);
    let dead = Store::open(url).await.unwrap().with_lease(lease);
    let live = Store::open(url).await.unwrap().with_lease(lease);
    let mut key = subject("key_lease", "key");
    key.max_parallel = Some(2);
    assert!(dead.admit_shared(&[key.clone()], "d1", 1).await.unwrap().ok);
    assert!(live.admit_shared(&[key.clone()], "l1", 1).await.unwrap().ok);
    assert!(!live.admit_shared(&[key.clone()], "l2", 1).await.unwrap().ok);
    dead.close().await;
    for _ in 0..4 {
        tokio::time::sleep(lease / 2).await;
        assert_eq!(live.renew_grants(&["l1".to_string()]).await.unwrap(), 1);
    }
    // d1 expired (never renewed); l1 is still held.
    assert_eq!(live.shared_in_flight("key_lease").await.unwrap(), 1);
    assert!(live.admit_shared(&[key.clone()], "l3", 1).await.unwrap().ok);
    assert!(!live.admit_shared(&[key.clone()], "l4", 1).await.unwrap().ok);
    assert_eq!(
        live.release_shared("d1", 1, 1, &[]).await.unwrap(),
        0,
        "reclaimed by the admission of l3"
    );
    assert_eq!(live.release_shared("l1", 1, 1, &[]).await.unwrap(), 1);
    assert_eq!(live.shared_in_flight("key_lease").await.unwrap(), 1, "l3");
    assert!(live.admit_shared(&[key.clone()], "l5", 1).await.unwrap().ok);
    assert!(
        !live.admit_shared(&[key.clone()], "l6", 1).await.unwrap().ok,
        "counts stay exact"
    );
    live.close().await;
}
