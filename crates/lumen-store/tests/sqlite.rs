//! The store against a real SQLite file: keys, tenants, the ledger and its rollups.

use lumen_store::usage::MAX_EVENTS_PAGE;
use lumen_store::*;

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
    }
}

#[tokio::test]
async fn keys_tenants_and_no_plaintext_secret_on_disk() {
    let path = tmp_db("keys");
    let store = Store::open(&path.to_string_lossy()).await.unwrap();
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
    assert_eq!(store.list_tenants().await.unwrap(), vec![t]);
    store.close().await;

    // The secret appears nowhere in the database files (WAL included).
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
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn events_roll_up_into_reports_and_budgets() {
    let store = Store::open("sqlite::memory:").await.unwrap();
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
        ..q
    };
    let page = store.usage_report(&q).await.unwrap();
    assert_eq!(page.data.len(), 3);
    assert_eq!(page.data[0].results[0].model.as_deref(), Some("m1"));
    assert_eq!(page.data[1].results[0].model.as_deref(), Some("m2"));
    assert!(page.data[2].results.is_empty());
    assert!(!page.has_more);
    let limited = store
        .usage_report(&UsageQuery { limit: 2, ..q })
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
    assert_eq!(store.prune_events(ms(day + 86_400)).await.unwrap(), 3);
    assert_eq!(
        store.tokens_used("key_a", day, day + 86_400).await.unwrap(),
        42,
        "rollups survive pruning"
    );
}
