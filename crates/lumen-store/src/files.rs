//! Uploaded files (OpenAI's Files API) and the output and error files of batches: one row
//! per file, its bytes on disk (the server owns the folder; the store only knows the row).
//!
//! Every read and delete filters on the owner (a tenant, or a key without one), so another
//! tenant's ids are answered as not found.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{Result, StoreError};
use crate::Store;

/// Most files one list page returns.
pub const MAX_FILES_PAGE: usize = 10_000;

/// One file, in OpenAI's `file` object shape (plus the owner and digest, which are not
/// serialized).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileRow {
    /// `file-…`.
    pub id: String,
    /// `file`.
    pub object: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// The name it was uploaded under (or that the batch gave it).
    pub filename: String,
    /// `batch` (uploads) or `batch_output` (results).
    pub purpose: String,
    /// `processed` (OpenAI's deprecated field; files are whole once they have a row).
    pub status: String,
    /// Who may see it.
    #[serde(skip)]
    pub owner: String,
    /// Hex SHA-256 of the content.
    #[serde(skip)]
    pub sha256: String,
}

fn file_from_row(r: &AnyRow) -> Result<FileRow> {
    let n = |c: &str| -> Result<u64> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
    Ok(FileRow {
        id: r.try_get("id")?,
        object: "file",
        bytes: n("bytes")?,
        created_at: n("created_at")?,
        filename: r.try_get("filename")?,
        purpose: r.try_get("purpose")?,
        status: r.try_get("status")?,
        owner: r.try_get("owner")?,
        sha256: r.try_get("sha256")?,
    })
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: "file",
        id: id.to_string(),
    }
}

impl Store {
    /// Records `file` (its bytes are already in place). A row with the same id (a batch's
    /// result file written again after a crash) takes the new size and digest.
    pub async fn insert_file(&self, file: &FileRow) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO files (id, owner, filename, purpose, bytes, sha256, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET bytes = excluded.bytes, sha256 = excluded.sha256",
        )
        .bind(&file.id)
        .bind(&file.owner)
        .bind(&file.filename)
        .bind(&file.purpose)
        .bind(file.bytes as i64)
        .bind(&file.sha256)
        .bind(&file.status)
        .bind(file.created_at as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// File `id` of `owner`.
    pub async fn get_file(&self, owner: &str, id: &str) -> Result<FileRow> {
        let row = sqlx::query("SELECT * FROM files WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(file_from_row)
            .transpose()?
            .ok_or_else(|| not_found(id))
    }

    /// `owner`'s files, newest first, optionally of one `purpose`, after file id `after`
    /// (the last id of the previous page), at most `limit`.
    pub async fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileRow>> {
        let (at, after_id) = match after {
            Some(a) => {
                let f = self.get_file(owner, a).await?;
                (f.created_at as i64, f.id)
            }
            None => (i64::MAX, String::new()),
        };
        let rows = sqlx::query(
            "SELECT * FROM files WHERE owner = $1 AND ($2 = '' OR purpose = $2) \
             AND (created_at < $3 OR (created_at = $3 AND id < $4) OR $4 = '') \
             ORDER BY created_at DESC, id DESC LIMIT $5",
        )
        .bind(owner)
        .bind(purpose.unwrap_or(""))
        .bind(at)
        .bind(&after_id)
        .bind(limit.clamp(1, MAX_FILES_PAGE + 1) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Deletes file `id` of `owner`'s row (the caller removes the bytes).
    pub async fn delete_file(&self, owner: &str, id: &str) -> Result<FileRow> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT * FROM files WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
        let file = row
            .as_ref()
            .map(file_from_row)
            .transpose()?
            .ok_or_else(|| not_found(id))?;
        sqlx::query("DELETE FROM files WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(file)
    }

    /// Every file id, for the start-up sweep of bytes on disk without a row.
    pub async fn all_file_ids(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM files")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
