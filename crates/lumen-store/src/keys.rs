//! API keys: creation (the secret is returned once and never stored), lookup by digest,
//! listing, limit updates, revocation and rotation.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::clock::{unix_secs, Period};
use crate::error::{Result, StoreError};
use crate::secret::{digest_hex, display_prefix, new_secret, random_hex};
use crate::Store;

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The admin API and everything a user may do.
    Admin,
    /// The inference API within the key's limits.
    User,
}

impl Role {
    /// `admin` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    fn parse(s: &str) -> Result<Role> {
        match s {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            other => Err(corrupt(format!("role '{other}'"))),
        }
    }
}

/// A key's limits; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (prompt plus the most the request may generate) per minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub max_parallel: Option<u64>,
    /// Tokens per budget period.
    pub budget_tokens: Option<u64>,
    /// The period `budget_tokens` covers.
    pub budget_period: Option<Period>,
    /// Highest scheduling priority the key may ask for.
    pub max_priority: Option<i64>,
}

/// A key as stored (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    /// `key_…`.
    pub id: String,
    /// Always `api_key`.
    pub object: &'static str,
    /// A label for people.
    pub name: String,
    /// The secret's first characters, to recognise it.
    pub prefix: String,
    /// Admin or user.
    pub role: Role,
    /// The tenant's id, if any.
    pub tenant: Option<String>,
    /// The models it may use (`None`: all).
    pub models: Option<Vec<String>>,
    /// Its limits.
    #[serde(flatten)]
    pub limits: KeyLimits,
    /// Unix time after which it is refused.
    pub expires_at: Option<u64>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Unix time of creation.
    pub created_at: u64,
    /// The tenant's limits, shared by all its keys (filled by [`Store::key_by_secret`]).
    #[serde(skip)]
    pub tenant_limits: Option<KeyLimits>,
}

impl ApiKey {
    /// Whether the key is usable at Unix time `now` (not revoked, not expired).
    pub fn is_active(&self, now: u64) -> bool {
        !self.revoked && self.expires_at.is_none_or(|e| now < e)
    }

    /// Whether the key may use `model` (its allow-list, if any, names it).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }
}

/// What creating a key takes.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    /// A label.
    pub name: String,
    /// Admin or user.
    pub role: Option<Role>,
    /// The tenant, by id or name.
    pub tenant: Option<String>,
    /// The allow-list (`None`: every model).
    pub models: Option<Vec<String>>,
    /// Limits.
    pub limits: KeyLimits,
    /// Expiry, Unix seconds.
    pub expires_at: Option<u64>,
}

/// A partial update: `None` leaves a field, `Some(None)` clears it (unlimited).
#[derive(Clone, Debug, Default)]
pub struct KeyPatch {
    /// New label.
    pub name: Option<String>,
    /// New allow-list.
    pub models: Option<Option<Vec<String>>>,
    /// New requests per minute.
    pub rpm: Option<Option<u64>>,
    /// New tokens per minute.
    pub tpm: Option<Option<u64>>,
    /// New parallel limit.
    pub max_parallel: Option<Option<u64>>,
    /// New budget.
    pub budget_tokens: Option<Option<u64>>,
    /// New budget period.
    pub budget_period: Option<Option<Period>>,
    /// New priority ceiling.
    pub max_priority: Option<Option<i64>>,
    /// New expiry.
    pub expires_at: Option<Option<u64>>,
}

/// Most models in an allow-list.
const MAX_MODELS: usize = 1000;
/// Longest name (key, tenant, model).
pub(crate) const MAX_NAME: usize = 200;
/// Largest number stored (SQLite integers are signed 64-bit).
const MAX_COUNT: u64 = i64::MAX as u64;

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt {
        table: "api_keys",
        reason,
    }
}

pub(crate) fn check_name(field: &'static str, name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            format!("must be 1 to {MAX_NAME} printable characters"),
        ));
    }
    Ok(())
}

fn check_models(models: &Option<Vec<String>>) -> Result<()> {
    if let Some(m) = models {
        if m.len() > MAX_MODELS {
            return Err(StoreError::invalid(
                "models",
                format!("at most {MAX_MODELS} entries"),
            ));
        }
        for name in m {
            check_name("models", name)?;
        }
    }
    Ok(())
}

pub(crate) fn check_count(field: &'static str, v: Option<u64>) -> Result<()> {
    match v {
        Some(0) => Err(StoreError::invalid(
            field,
            "must be at least 1 (leave it out for no limit)",
        )),
        Some(n) if n > MAX_COUNT => Err(StoreError::invalid(field, "too large")),
        _ => Ok(()),
    }
}

pub(crate) fn check_limits(l: &KeyLimits) -> Result<()> {
    check_count("rpm", l.rpm)?;
    check_count("tpm", l.tpm)?;
    check_count("max_parallel", l.max_parallel)?;
    check_count("budget_tokens", l.budget_tokens)?;
    Ok(())
}

fn check_expiry(e: Option<u64>) -> Result<()> {
    if e.is_some_and(|e| e > MAX_COUNT) {
        return Err(StoreError::invalid("expires_at", "too large"));
    }
    Ok(())
}

pub(crate) fn opt_u64(row: &AnyRow, col: &str) -> Result<Option<u64>> {
    let v: Option<i64> = row.try_get(col)?;
    v.map(|n| u64::try_from(n).map_err(|_| corrupt(format!("negative {col}"))))
        .transpose()
}

fn key_from_row(row: &AnyRow) -> Result<ApiKey> {
    let models: Option<String> = row.try_get("models")?;
    let models = models
        .map(|m| serde_json::from_str(&m).map_err(|e| corrupt(format!("models: {e}"))))
        .transpose()?;
    let period: Option<String> = row.try_get("budget_period")?;
    let budget_period = period
        .map(|p| Period::parse(&p).ok_or_else(|| corrupt(format!("budget_period '{p}'"))))
        .transpose()?;
    let role: String = row.try_get("role")?;
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    let created: i64 = row.try_get("created_at")?;
    Ok(ApiKey {
        id: row.try_get("id")?,
        object: "api_key",
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        role: Role::parse(&role)?,
        tenant: row.try_get("tenant_id")?,
        models,
        limits: KeyLimits {
            rpm: opt_u64(row, "rpm")?,
            tpm: opt_u64(row, "tpm")?,
            max_parallel: opt_u64(row, "max_parallel")?,
            budget_tokens: opt_u64(row, "budget_tokens")?,
            budget_period,
            max_priority: row.try_get("max_priority")?,
        },
        expires_at: opt_u64(row, "expires_at")?,
        revoked: revoked.is_some(),
        created_at: created.max(0) as u64,
        tenant_limits: None,
    })
}

fn models_json(models: &Option<Vec<String>>) -> Option<String> {
    models
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()))
}

pub(crate) fn i64_of(v: Option<u64>) -> Option<i64> {
    // Validated to be at most i64::MAX before any write.
    v.map(|n| n.min(MAX_COUNT) as i64)
}

impl Store {
    /// Creates a key; returns it and its secret (the only time the secret exists outside the
    /// caller's hands).
    pub async fn create_key(&self, new: NewKey) -> Result<(ApiKey, String)> {
        check_name("name", &new.name)?;
        check_models(&new.models)?;
        let mut limits = new.limits;
        check_limits(&limits)?;
        check_expiry(new.expires_at)?;
        if limits.budget_tokens.is_some() && limits.budget_period.is_none() {
            limits.budget_period = Some(Period::Month);
        }
        let mut tx = self.begin_write().await?;
        let tenant = match &new.tenant {
            Some(t) => Some(crate::tenants::resolve(&mut tx, t).await?),
            None => None,
        };
        let id = format!("key_{}", random_hex(12));
        let secret = new_secret();
        sqlx::query(
            "INSERT INTO api_keys (id, name, secret_sha256, prefix, role, tenant_id, models, rpm, tpm, \
             max_parallel, budget_tokens, budget_period, max_priority, expires_at, revoked_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, NULL, $15)",
        )
        .bind(&id)
        .bind(new.name.trim())
        .bind(digest_hex(&secret))
        .bind(display_prefix(&secret))
        .bind(new.role.unwrap_or(Role::User).as_str())
        .bind(&tenant)
        .bind(models_json(&new.models))
        .bind(i64_of(limits.rpm))
        .bind(i64_of(limits.tpm))
        .bind(i64_of(limits.max_parallel))
        .bind(i64_of(limits.budget_tokens))
        .bind(limits.budget_period.map(Period::as_str))
        .bind(limits.max_priority)
        .bind(i64_of(new.expires_at))
        .bind(unix_secs() as i64)
        .execute(&mut *tx)
        .await?;
        let key = fetch(&mut tx, &id).await?;
        tx.commit().await?;
        Ok((key, secret))
    }

    /// The key whose secret is `secret` (revoked and expired ones too: the caller decides),
    /// with its tenant's limits.
    pub async fn key_by_secret(&self, secret: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE secret_sha256 = $1")
            .bind(digest_hex(secret))
            .fetch_optional(&self.pool)
            .await?;
        let Some(mut key) = row.as_ref().map(key_from_row).transpose()? else {
            return Ok(None);
        };
        if let Some(t) = &key.tenant {
            key.tenant_limits = Some(self.get_tenant(t).await?.limits);
        }
        Ok(Some(key))
    }

    /// The key `id`.
    pub async fn get_key(&self, id: &str) -> Result<ApiKey> {
        let mut conn = self.pool.acquire().await?;
        fetch(&mut conn, id).await
    }

    /// Every key, oldest first (optionally only a tenant's, by id).
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query("SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id")
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM api_keys ORDER BY created_at, id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(key_from_row).collect()
    }

    /// Whether any key that is neither revoked nor expired exists.
    pub async fn any_active_key(&self) -> Result<bool> {
        let now = unix_secs() as i64;
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Whether the store holds any key at all (revoked ones count: revoking the last key
    /// must not reopen a server).
    pub async fn any_key(&self) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM api_keys LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Applies `patch` to key `id`.
    pub async fn update_key(&self, id: &str, patch: KeyPatch) -> Result<ApiKey> {
        let mut tx = self.begin_write().await?;
        let mut key = fetch(&mut tx, id).await?;
        if let Some(n) = patch.name {
            check_name("name", &n)?;
            key.name = n.trim().to_string();
        }
        if let Some(m) = patch.models {
            check_models(&m)?;
            key.models = m;
        }
        let l = &mut key.limits;
        macro_rules! set {
            ($f:ident) => {
                if let Some(v) = patch.$f {
                    l.$f = v;
                }
            };
        }
        set!(rpm);
        set!(tpm);
        set!(max_parallel);
        set!(budget_tokens);
        set!(budget_period);
        set!(max_priority);
        if l.budget_tokens.is_some() && l.budget_period.is_none() {
            l.budget_period = Some(Period::Month);
        }
        check_limits(l)?;
        if let Some(e) = patch.expires_at {
            check_expiry(e)?;
            key.expires_at = e;
        }
        sqlx::query(
            "UPDATE api_keys SET name = $1, models = $2, rpm = $3, tpm = $4, max_parallel = $5, \
             budget_tokens = $6, budget_period = $7, max_priority = $8, expires_at = $9 WHERE id = $10",
        )
        .bind(&key.name)
        .bind(models_json(&key.models))
        .bind(i64_of(key.limits.rpm))
        .bind(i64_of(key.limits.tpm))
        .bind(i64_of(key.limits.max_parallel))
        .bind(i64_of(key.limits.budget_tokens))
        .bind(key.limits.budget_period.map(Period::as_str))
        .bind(key.limits.max_priority)
        .bind(i64_of(key.expires_at))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Revokes key `id` (idempotent).
    pub async fn revoke_key(&self, id: &str) -> Result<ApiKey> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
            .bind(unix_secs() as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let key = fetch(&mut tx, id).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Gives key `id` a new secret (the old one stops working); returns it with the secret.
    pub async fn rotate_key(&self, id: &str) -> Result<(ApiKey, String)> {
        let secret = new_secret();
        let mut tx = self.begin_write().await?;
        let key = fetch(&mut tx, id).await?;
        if key.revoked {
            return Err(StoreError::Conflict(format!(
                "api key '{id}' is revoked; create a new one"
            )));
        }
        sqlx::query("UPDATE api_keys SET secret_sha256 = $1, prefix = $2 WHERE id = $3")
            .bind(digest_hex(&secret))
            .bind(display_prefix(&secret))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let key = fetch(&mut tx, id).await?;
        tx.commit().await?;
        Ok((key, secret))
    }
}

async fn fetch(conn: &mut sqlx::AnyConnection, id: &str) -> Result<ApiKey> {
    let row = sqlx::query("SELECT * FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(r) => key_from_row(&r),
        None => Err(StoreError::NotFound {
            kind: "api key",
            id: id.to_string(),
        }),
    }
}
