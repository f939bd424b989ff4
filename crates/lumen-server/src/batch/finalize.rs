//! Writes a finished batch's output and error files from its item rows, then ends it.
//!
//! Idempotent by construction: the files' ids are derived from the batch id, each file is
//! written to a temporary name and renamed, and its row is inserted or updated to match; the
//! batch's final status is set last. A crash at any point leaves the batch `finalizing` (or
//! `cancelling`) and the next pass writes the same files again.

use std::io::Write;

use lumen_store::{BatchRow, FileRow, ItemOutcome, Store};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::BatchConfig;
use crate::error::ServerError;

/// Item rows read per query while writing.
const PAGE: usize = 1000;

/// The error line of an item the window expired before it ran (OpenAI's wording).
pub fn expired_line(batch_id: &str, line: u64, custom_id: &str) -> String {
    json!({
        "id": format!("batch_req_{}_{line}", batch_id.trim_start_matches("batch_")),
        "custom_id": custom_id,
        "response": null,
        "error": {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        },
    })
    .to_string()
}

/// One result file being written: a temporary file, its hash and size.
struct Out {
    id: String,
    tmp: std::path::PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    hash: Sha256,
    bytes: u64,
    lines: u64,
}

impl Out {
    fn create(config: &BatchConfig, id: String) -> Result<Out, ServerError> {
        let tmp = config.partial_dir().join(format!("{id}.part"));
        let file = std::fs::File::create(&tmp)
            .map_err(|e| ServerError::Internal(format!("cannot write {}: {e}", tmp.display())))?;
        Ok(Out {
            id,
            tmp,
            file: std::io::BufWriter::new(file),
            hash: Sha256::new(),
            bytes: 0,
            lines: 0,
        })
    }

    fn line(&mut self, text: &str) -> Result<(), ServerError> {
        let io =
            |e: std::io::Error| ServerError::Internal(format!("cannot write a result file: {e}"));
        self.file.write_all(text.as_bytes()).map_err(io)?;
        self.file.write_all(b"\n").map_err(io)?;
        self.hash.update(text.as_bytes());
        self.hash.update(b"\n");
        self.bytes += text.len() as u64 + 1;
        self.lines += 1;
        Ok(())
    }

    /// Syncs and renames the file into place; `None` (and no file) when it has no line.
    fn finish(self, config: &BatchConfig) -> Result<Option<(String, u64, String)>, ServerError> {
        let io =
            |e: std::io::Error| ServerError::Internal(format!("cannot write a result file: {e}"));
        if self.lines == 0 {
            drop(self.file);
            let _ = std::fs::remove_file(&self.tmp);
            return Ok(None);
        }
        let file = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, config.path_of(&self.id)).map_err(io)?;
        Ok(Some((
            self.id,
            self.bytes,
            lumen_store::secret::hex(&self.hash.finalize()),
        )))
    }
}

/// Writes the result files of `batch` (`finalizing`, or `cancelling` with nothing running)
/// and ends it.
pub async fn finalize(
    store: &Store,
    config: &BatchConfig,
    batch: &BatchRow,
) -> Result<(), ServerError> {
    let suffix = batch.id.trim_start_matches("batch_");
    let mut out = Out::create(config, format!("file-{suffix}-output"))?;
    let mut err = Out::create(config, format!("file-{suffix}-errors"))?;
    let mut after = 0;
    loop {
        let page = store.item_results(&batch.id, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.line;
        // Writing is blocking file I/O, but on small buffered writes of a page at a time.
        for it in &page {
            match (it.outcome, &it.result) {
                (ItemOutcome::Ok, Some(r)) => out.line(r)?,
                (ItemOutcome::Error, Some(r)) => err.line(r)?,
                _ => err.line(&expired_line(&batch.id, it.line, &it.custom_id))?,
            }
        }
    }
    let now = config.clock.now_secs();
    let mut ids = [None, None];
    for (slot, o) in ids.iter_mut().zip([out, err]) {
        if let Some((id, bytes, sha256)) = o.finish(config)? {
            store
                .insert_file(&FileRow {
                    id: id.clone(),
                    object: "file",
                    bytes,
                    created_at: now,
                    filename: format!("{id}.jsonl"),
                    purpose: "batch_output".into(),
                    status: "processed".into(),
                    owner: batch.owner.clone(),
                    sha256,
                })
                .await?;
            *slot = Some(id);
        }
    }
    let [output, error] = ids;
    if store
        .finish_batch(&batch.id, output.as_deref(), error.as_deref(), now)
        .await?
    {
        let b = store.batch_by_id(&batch.id).await?;
        tracing::info!(batch = %b.id, status = %b.status, completed = b.counts.completed, failed = b.counts.failed, "batch finished");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_store::{NewBatch, NewItem};

    /// A kill after the output file was written (here: a stale file and row under its id)
    /// and before the status changed: finalizing again writes the right files and ends it.
    #[tokio::test]
    async fn finalizing_again_after_a_crash_writes_the_same_files() {
        let dir = std::env::temp_dir().join(format!(
            "lumen-finalize-{}-{}",
            std::process::id(),
            lumen_store::secret::random_hex(4)
        ));
        let store = Store::open(&dir.join("lumen.db").to_string_lossy())
            .await
            .unwrap();
        let config = BatchConfig::new(&dir);
        std::fs::create_dir_all(config.partial_dir()).unwrap();
        store
            .create_batch(&NewBatch {
                id: "batch_f".into(),
                owner: "o".into(),
                key_id: String::new(),
                endpoint: "/v1/embeddings".into(),
                input_file_id: "file-in".into(),
                completion_window: "24h".into(),
                metadata: None,
                created_at: 1,
                expires_at: 2,
            })
            .await
            .unwrap();
        let items: Vec<NewItem> = (1..=3)
            .map(|line| NewItem {
                line,
                custom_id: format!("c{line}"),
                body: "{}".into(),
            })
            .collect();
        store.start_batch("batch_f", &items, 1).await.unwrap();
        for it in store.claim_items("w", 10, 0, u64::MAX / 2).await.unwrap() {
            let outcome = if it.line == 2 {
                ItemOutcome::Error
            } else {
                ItemOutcome::Ok
            };
            let line = format!("{{\"custom_id\":\"{}\"}}", it.custom_id);
            assert!(store
                .answer_item("batch_f", it.line, "w", outcome, &line, None)
                .await
                .unwrap());
        }
        assert!(store.begin_finalizing("batch_f", 1).await.unwrap());
        // What a crash mid-finalizing could leave: a stale file and its row.
        std::fs::write(config.path_of("file-f-output"), "stale").unwrap();
        store
            .insert_file(&FileRow {
                id: "file-f-output".into(),
                object: "file",
                bytes: 5,
                created_at: 1,
                filename: "x".into(),
                purpose: "batch_output".into(),
                status: "processed".into(),
                owner: "o".into(),
                sha256: "00".into(),
            })
            .await
            .unwrap();
        let b = store.batch_by_id("batch_f").await.unwrap();
        finalize(&store, &config, &b).await.unwrap();
        let b = store.batch_by_id("batch_f").await.unwrap();
        assert_eq!(b.status, "completed");
        assert_eq!(b.output_file_id.as_deref(), Some("file-f-output"));
        assert_eq!(b.error_file_id.as_deref(), Some("file-f-errors"));
        let out = std::fs::read_to_string(config.path_of("file-f-output")).unwrap();
        assert_eq!(out, "{\"custom_id\":\"c1\"}\n{\"custom_id\":\"c3\"}\n");
        let row = store.get_file("o", "file-f-output").await.unwrap();
        assert_eq!(
            row.bytes,
            out.len() as u64,
            "the row matches the file written"
        );
        let err = std::fs::read_to_string(config.path_of("file-f-errors")).unwrap();
        assert_eq!(err.lines().count(), 1);
        assert!(std::fs::read_dir(config.partial_dir())
            .unwrap()
            .next()
            .is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
