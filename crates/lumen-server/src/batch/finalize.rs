//! Writes a finished batch's output and error files from its item rows, then ends it.
//!
//! Idempotent by construction: the files' ids are derived from the batch id, each file is
//! written to a temporary name and renamed, and its row is inserted only if missing; the
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
