//! `/v1/files`: upload (multipart, streamed to disk), list, retrieve, content, delete.
//!
//! An upload is written chunk by chunk to `files/.partial/<id>.part` while its SHA-256 and
//! size are counted, so no upload is ever held in memory; past [`MAX_FILE_BYTES`] the
//! request is a 413 and the partial file is removed. A whole file is synced, renamed to
//! `files/<id>` and then recorded; [`sweep`] at start-up deletes anything a crash left
//! between those steps (partial files, and files without a row).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lumen_store::{FileRow, Store};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{new_id, owner_of, BatchConfig, MAX_FILE_BYTES};
use crate::error::ServerError;
use crate::state::AppState;
use crate::tenancy::{Principal, RequestCtx};

/// Longest value accepted for a text field (`purpose`).
const MAX_FIELD: usize = 256;

/// The caller's owner id, the store and the batch configuration.
pub(crate) fn context(
    state: &AppState,
    ctx: &Option<Extension<Arc<RequestCtx>>>,
) -> Result<(String, Store, Arc<BatchConfig>), ServerError> {
    let principal = ctx
        .as_ref()
        .map_or(Principal::Open, |Extension(c)| c.principal.clone());
    let store = state.tenancy().store()?.clone();
    let config = state.batch()?;
    Ok((owner_of(&principal), store, config))
}

/// Removes the temporary file on every early return.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ServerError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ServerError::PayloadTooLarge {
            limit: MAX_FILE_BYTES as usize,
        };
    }
    ServerError::param("file", format!("could not read the multipart body: {e}"))
}

fn io_error(what: &str, e: std::io::Error) -> ServerError {
    ServerError::Internal(format!("{what}: {e}"))
}

/// `POST /v1/files` (multipart: `purpose` = `batch`, `file`).
pub async fn upload(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ServerError> {
    let (owner, store, config) = context(&state, &ctx)?;
    let mut multipart = multipart.map_err(|e| {
        ServerError::param(
            "file",
            format!("send the file as multipart/form-data with fields 'purpose' and 'file': {e}"),
        )
    })?;
    let id = new_id("file-");
    let partial_dir = config.partial_dir();
    tokio::fs::create_dir_all(&partial_dir)
        .await
        .map_err(|e| io_error("cannot create the upload folder", e))?;
    let tmp = partial_dir.join(format!("{id}.part"));
    let mut guard = Partial(None);
    let mut purpose: Option<String> = None;
    let mut written: Option<(String, u64, String)> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name().unwrap_or("") {
            "purpose" => {
                let mut text = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    text.extend_from_slice(&chunk);
                    if text.len() > MAX_FIELD {
                        return Err(ServerError::param("purpose", "purpose is too long"));
                    }
                }
                purpose = Some(String::from_utf8_lossy(&text).into_owned());
            }
            "file" => {
                if written.is_some() {
                    return Err(ServerError::param("file", "send one file per upload"));
                }
                let filename = field
                    .file_name()
                    .unwrap_or("upload.jsonl")
                    .chars()
                    .take(MAX_FIELD)
                    .collect::<String>();
                let mut out = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(|e| io_error("cannot create the upload file", e))?;
                guard.0 = Some(tmp.clone());
                let mut hash = Sha256::new();
                let mut bytes = 0u64;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    bytes += chunk.len() as u64;
                    if bytes > MAX_FILE_BYTES {
                        return Err(ServerError::PayloadTooLarge {
                            limit: MAX_FILE_BYTES as usize,
                        });
                    }
                    hash.update(&chunk);
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| io_error("cannot write the upload", e))?;
                }
                out.sync_all()
                    .await
                    .map_err(|e| io_error("cannot write the upload", e))?;
                written = Some((filename, bytes, lumen_store::secret::hex(&hash.finalize())));
            }
            // Other fields (OpenAI's `expires_after`, …) are drained and ignored.
            _ => while field.chunk().await.map_err(multipart_error)?.is_some() {},
        }
    }
    let Some((filename, bytes, sha256)) = written else {
        return Err(ServerError::param("file", "the upload has no 'file' field"));
    };
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(ServerError::param(
                "purpose",
                format!("purpose must be 'batch' (the only one this server stores), not '{other}'"),
            ))
        }
        None => {
            return Err(ServerError::param(
                "purpose",
                "the upload needs a 'purpose' field",
            ))
        }
    }
    let dest = config.path_of(&id);
    tokio::fs::rename(&tmp, &dest)
        .await
        .map_err(|e| io_error("cannot move the upload into place", e))?;
    guard.0 = Some(dest);
    let row = FileRow {
        id,
        object: "file",
        bytes,
        created_at: config.clock.now_secs(),
        filename,
        purpose: "batch".into(),
        status: "processed".into(),
        owner,
        sha256,
    };
    store.insert_file(&row).await?;
    // Recorded: the file now belongs to its row.
    guard.0 = None;
    tracing::info!(id = %row.id, bytes = row.bytes, "file uploaded");
    Ok(Json(file_json(&row)).into_response())
}

/// OpenAI's `file` object.
pub fn file_json(f: &FileRow) -> serde_json::Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": f.status,
        "expires_at": null,
        "status_details": null,
    })
}

/// `GET /v1/files` query.
#[derive(Deserialize, Debug)]
pub struct ListQuery {
    /// Only files of this purpose.
    pub purpose: Option<String>,
    /// The last id of the previous page.
    pub after: Option<String>,
    /// Page size (1 to 10,000; default 10,000).
    pub limit: Option<i64>,
    /// `desc` (the only order).
    pub order: Option<String>,
}

/// `GET /v1/files`.
pub async fn list(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ServerError> {
    let (owner, store, _) = context(&state, &ctx)?;
    let Query(q) = query.map_err(|e| ServerError::param("query", e.body_text()))?;
    if q.order.as_deref().is_some_and(|o| o != "desc") {
        return Err(ServerError::param("order", "only order=desc is supported"));
    }
    let limit = match q.limit {
        None => lumen_store::files::MAX_FILES_PAGE,
        Some(l) if (1..=lumen_store::files::MAX_FILES_PAGE as i64).contains(&l) => l as usize,
        Some(_) => return Err(ServerError::param("limit", "limit must be 1 to 10000")),
    };
    let mut rows = store
        .list_files(&owner, q.purpose.as_deref(), q.after.as_deref(), limit + 1)
        .await?;
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    Ok(Json(json!({
        "object": "list",
        "data": rows.iter().map(file_json).collect::<Vec<_>>(),
        "has_more": has_more,
        "first_id": rows.first().map(|f| f.id.clone()),
        "last_id": rows.last().map(|f| f.id.clone()),
    }))
    .into_response())
}

/// `GET /v1/files/{id}`.
pub async fn get(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ServerError> {
    let (owner, store, _) = context(&state, &ctx)?;
    let f = store.get_file(&owner, &id).await?;
    Ok(Json(file_json(&f)).into_response())
}

/// `GET /v1/files/{id}/content`: the bytes, streamed from disk.
pub async fn content(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ServerError> {
    let (owner, store, config) = context(&state, &ctx)?;
    let f = store.get_file(&owner, &id).await?;
    let file = tokio::fs::File::open(config.path_of(&f.id))
        .await
        .map_err(|e| io_error("cannot open the file", e))?;
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, f.bytes.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `DELETE /v1/files/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ServerError> {
    let (owner, store, config) = context(&state, &ctx)?;
    let f = store.delete_file(&owner, &id).await?;
    if let Err(e) = tokio::fs::remove_file(config.path_of(&f.id)).await {
        tracing::warn!(id = %f.id, error = %e, "file row deleted but its bytes could not be");
    }
    Ok(Json(json!({"id": f.id, "object": "file", "deleted": true})).into_response())
}

/// How old a leftover must be before a server on a shared (PostgreSQL) database removes it:
/// another server may be writing it right now.
const SHARED_LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// At start-up: deletes partial uploads, and files on disk without a row (a crash between
/// the rename and the insert). On SQLite the database, and so the folder, serves this one
/// server, and every leftover goes; on PostgreSQL, servers sharing the folder may be
/// uploading now, so only leftovers older than an hour go.
pub async fn sweep(store: &Store, config: &BatchConfig) -> Result<(), ServerError> {
    let min_age = match store.backend() {
        lumen_store::Backend::Sqlite => std::time::Duration::ZERO,
        lumen_store::Backend::Postgres => SHARED_LEFTOVER_AGE,
    };
    let old_enough = |p: &Path| {
        p.metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age >= min_age)
    };
    let partial = config.partial_dir();
    tokio::fs::create_dir_all(&partial)
        .await
        .map_err(|e| ServerError::Startup(format!("cannot create {}: {e}", partial.display())))?;
    if let Ok(mut dir) = tokio::fs::read_dir(&partial).await {
        while let Ok(Some(entry)) = dir.next_entry().await {
            if is_file(&entry.path()) && old_enough(&entry.path()) {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
    let known: std::collections::HashSet<String> = store
        .all_file_ids()
        .await
        .map_err(|e| ServerError::Startup(format!("cannot list files: {e}")))?
        .into_iter()
        .collect();
    let mut dir = tokio::fs::read_dir(&config.files_dir)
        .await
        .map_err(|e| ServerError::Startup(format!("cannot read the files folder: {e}")))?;
    while let Ok(Some(entry)) = dir.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with("file-")
            && !known.contains(&name)
            && is_file(&path)
            && old_enough(&path)
        {
            tracing::info!(file = %name, "removing a file without a row (left by a crash)");
            let _ = tokio::fs::remove_file(path).await;
        }
    }
    Ok(())
}

fn is_file(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.is_file())
}
