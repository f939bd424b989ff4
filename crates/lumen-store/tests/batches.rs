//! Files, batches and batch items on both backends: claims are disjoint, an item is answered
//! once (with its counts and usage event in the same transaction), leases that end are
//! reclaimed, expiry and cancellation settle every item, and owners never see each other.

use lumen_store::*;
use lumen_testkit::pg::PgCluster;

fn tmp_db(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lumen-store-batches-{tag}-{}-{}",
        std::process::id(),
        lumen_store::secret::random_hex(4)
    ));
    dir.join("lumen.db")
}

fn file(id: &str, owner: &str, at: u64) -> FileRow {
    FileRow {
        id: id.into(),
        object: "file",
        bytes: 10,
        created_at: at,
        filename: "in.jsonl".into(),
        purpose: "batch".into(),
        status: "processed".into(),
        owner: owner.into(),
        sha256: "00".into(),
    }
}

fn new_batch(id: &str, owner: &str, at: u64) -> NewBatch {
    NewBatch {
        id: id.into(),
        owner: owner.into(),
        key_id: String::new(),
        endpoint: "/v1/chat/completions".into(),
        input_file_id: "file-a".into(),
        completion_window: "24h".into(),
        metadata: Some(r#"{"k":"v"}"#.into()),
        created_at: at,
        expires_at: at + 86_400,
    }
}

fn items(n: u64) -> Vec<NewItem> {
    (1..=n)
        .map(|line| NewItem {
            line,
            custom_id: format!("c{line}"),
            body: "{}".into(),
        })
        .collect()
}

fn event(batch: &str, custom_id: &str) -> UsageEvent {
    UsageEvent {
        request_id: format!("req-{custom_id}"),
        created_at_ms: 1_700_000_000_000,
        key_id: "key_x".into(),
        tenant_id: String::new(),
        model: "m".into(),
        endpoint: "chat.completions".into(),
        prompt_tokens: 3,
        cached_tokens: 0,
        completion_tokens: 2,
        status: Outcome::Ok,
        latency_ms: 1,
        ttft_ms: None,
        compute_us: 0,
        batch: Some(BatchRef {
            batch_id: batch.into(),
            custom_id: custom_id.into(),
        }),
    }
}

async fn files_belong_to_their_owner(store: &Store) {
    store.insert_file(&file("file-a", "t1", 100)).await.unwrap();
    store.insert_file(&file("file-b", "t1", 101)).await.unwrap();
    store.insert_file(&file("file-c", "t2", 102)).await.unwrap();
    // Inserting the same id again (finalizing twice) keeps the row, with the new size.
    let mut again = file("file-a", "t1", 999);
    again.bytes = 11;
    store.insert_file(&again).await.unwrap();
    let a = store.get_file("t1", "file-a").await.unwrap();
    assert_eq!((a.created_at, a.bytes), (100, 11));
    assert!(matches!(
        store.get_file("t2", "file-a").await,
        Err(StoreError::NotFound { .. })
    ));
    let page = store.list_files("t1", None, None, 1).await.unwrap();
    assert_eq!(page[0].id, "file-b", "newest first");
    let next = store
        .list_files("t1", None, Some("file-b"), 10)
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
        ["file-a"]
    );
    assert!(store.delete_file("t2", "file-b").await.is_err());
    store.delete_file("t1", "file-b").await.unwrap();
    assert!(store.get_file("t1", "file-b").await.is_err());
}

async fn items_are_claimed_apart_and_answered_once(store: &Store) {
    let b = store
        .create_batch(&new_batch("batch_1", "t1", 100))
        .await
        .unwrap();
    assert_eq!(b.status, "validating");
    assert!(store.get_batch("t2", "batch_1").await.is_err());
    assert!(store.start_batch("batch_1", &items(10), 101).await.unwrap());
    // A second validator (after a crash) finds the work done.
    assert!(!store.start_batch("batch_1", &items(10), 102).await.unwrap());
    let b = store.get_batch("t1", "batch_1").await.unwrap();
    assert_eq!((b.status.as_str(), b.counts.total), ("in_progress", 10));

    // Two workers at once take disjoint items.
    let (a, bb) = tokio::join!(
        store.claim_items("w1", 4, 1_000, 10_000),
        store.claim_items("w2", 4, 1_000, 2_000)
    );
    let (a, bb) = (a.unwrap(), bb.unwrap());
    assert_eq!(a.len() + bb.len(), 8);
    let mut lines: Vec<u64> = a.iter().chain(&bb).map(|i| i.line).collect();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 8, "no item claimed twice");

    // Answered once: a second answer, or one from another owner, writes nothing.
    let it = &a[0];
    let ev = event("batch_1", &it.custom_id);
    assert!(store
        .answer_item(
            "batch_1",
            it.line,
            "w1",
            ItemOutcome::Ok,
            "{\"x\":1}",
            Some(&ev)
        )
        .await
        .unwrap());
    assert!(!store
        .answer_item("batch_1", it.line, "w1", ItemOutcome::Ok, "{}", Some(&ev))
        .await
        .unwrap());
    let other = &bb[0];
    assert!(!store
        .answer_item("batch_1", other.line, "w1", ItemOutcome::Error, "{}", None)
        .await
        .unwrap());
    let events = store.usage_events(0, 100, None).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.batch, ev.batch);

    // w2 dies: once its leases end, its items are claimed again (with the two left), while
    // w1's, still leased, are not.
    let again = store.claim_items("w3", 100, 2_500, 5_000).await.unwrap();
    let mut got: Vec<u64> = again.iter().map(|i| i.line).collect();
    got.sort();
    let mut want: Vec<u64> = bb.iter().map(|i| i.line).collect();
    want.extend(lines_not_in(&lines, 10));
    want.sort();
    assert_eq!(got, want);
    // The dead worker's answers now lose.
    assert!(!store
        .answer_item("batch_1", bb[1].line, "w2", ItemOutcome::Ok, "{}", None)
        .await
        .unwrap());
    for it in again.iter() {
        assert!(store
            .answer_item(
                "batch_1",
                it.line,
                "w3",
                ItemOutcome::Error,
                "{\"e\":1}",
                None
            )
            .await
            .unwrap());
    }
    // w1 renews, then dies; after its renewed lease its unanswered items run elsewhere.
    assert_eq!(store.renew_leases("w1", 20_000).await.unwrap(), 3);
    assert!(store
        .claim_items("w4", 100, 15_000, 30_000)
        .await
        .unwrap()
        .is_empty());
    let late = store.claim_items("w4", 100, 20_001, 30_000).await.unwrap();
    assert_eq!(late.len(), 3, "w1's unanswered items, lease ended");
    assert!(
        !store.begin_finalizing("batch_1", 200).await.unwrap(),
        "w4 still runs"
    );
    for it in late.iter() {
        assert!(store
            .answer_item("batch_1", it.line, "w4", ItemOutcome::Ok, "{\"o\":1}", None)
            .await
            .unwrap());
    }
    let b = store.batch_by_id("batch_1").await.unwrap();
    assert_eq!((b.counts.completed, b.counts.failed), (4, 6));
    assert!(store.begin_finalizing("batch_1", 200).await.unwrap());
    let results = store.item_results("batch_1", 0, 100).await.unwrap();
    assert_eq!(results.len(), 10);
    assert!(results.windows(2).all(|w| w[0].line < w[1].line));
    assert!(store
        .finish_batch("batch_1", Some("file-o"), None, 201)
        .await
        .unwrap());
    let b = store.batch_by_id("batch_1").await.unwrap();
    assert_eq!(b.status, "completed");
    assert_eq!(b.completed_at, Some(201));
    assert!(!store
        .finish_batch("batch_1", None, None, 202)
        .await
        .unwrap());
}

fn lines_not_in(taken: &[u64], n: u64) -> Vec<u64> {
    (1..=n).filter(|l| !taken.contains(l)).collect()
}

async fn expiry_and_cancellation_settle_every_item(store: &Store) {
    store
        .create_batch(&new_batch("batch_2", "t1", 300))
        .await
        .unwrap();
    store.start_batch("batch_2", &items(5), 300).await.unwrap();
    let running = store.claim_items("w", 2, 1_000, 9_000).await.unwrap();
    assert_eq!(running.len(), 2);
    store
        .answer_item("batch_2", running[0].line, "w", ItemOutcome::Ok, "{}", None)
        .await
        .unwrap();
    assert!(store.expire_batch("batch_2", 400).await.unwrap());
    // The item still running loses its answer: it expired.
    assert!(!store
        .answer_item("batch_2", running[1].line, "w", ItemOutcome::Ok, "{}", None)
        .await
        .unwrap());
    let b = store.batch_by_id("batch_2").await.unwrap();
    assert_eq!(
        (b.status.as_str(), b.counts.completed, b.counts.failed),
        ("finalizing", 1, 4)
    );
    let expired = store.item_results("batch_2", 0, 10).await.unwrap();
    assert_eq!(
        expired
            .iter()
            .filter(|r| r.outcome == ItemOutcome::Expired)
            .count(),
        4
    );
    store
        .finish_batch("batch_2", None, Some("file-e"), 401)
        .await
        .unwrap();
    assert_eq!(
        store.batch_by_id("batch_2").await.unwrap().status,
        "expired"
    );

    store
        .create_batch(&new_batch("batch_3", "t1", 500))
        .await
        .unwrap();
    store.start_batch("batch_3", &items(5), 500).await.unwrap();
    let running = store.claim_items("w", 1, 1_000, 9_000).await.unwrap();
    let b = store.cancel_batch("t1", "batch_3", 501).await.unwrap();
    assert_eq!(b.status, "cancelling");
    assert!(store.cancel_batch("t2", "batch_3", 501).await.is_err());
    assert_eq!(store.running_items("batch_3", 1_000).await.unwrap(), 1);
    assert!(store
        .claim_items("w", 10, 1_000, 9_000)
        .await
        .unwrap()
        .is_empty());
    store
        .answer_item("batch_3", running[0].line, "w", ItemOutcome::Ok, "{}", None)
        .await
        .unwrap();
    assert_eq!(store.running_items("batch_3", 1_000).await.unwrap(), 0);
    store
        .finish_batch("batch_3", Some("file-x"), None, 502)
        .await
        .unwrap();
    let b = store.batch_by_id("batch_3").await.unwrap();
    assert_eq!(
        (b.status.as_str(), b.cancelled_at, b.counts.completed),
        ("cancelled", Some(502), 1)
    );
    let listed = store.list_batches("t1", None, 2).await.unwrap();
    assert_eq!(listed[0].id, "batch_3");
    let rest = store.list_batches("t1", Some("batch_2"), 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        ["batch_1"]
    );
}

async fn all(store: Store) {
    files_belong_to_their_owner(&store).await;
    items_are_claimed_apart_and_answered_once(&store).await;
    expiry_and_cancellation_settle_every_item(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let path = tmp_db("sqlite");
    let store = Store::open(&path.to_string_lossy()).await.unwrap();
    all(store).await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(pg) = PgCluster::start() else { return };
    let url = pg.create_database("batches");
    all(Store::open(&url).await.unwrap()).await;
}
