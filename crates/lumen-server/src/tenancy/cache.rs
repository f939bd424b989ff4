//! Key lookups by secret digest, cached for less than a second.
//!
//! Every request with a store key would otherwise cost a database read. Entries (found or
//! not) live [`TTL`], so a key revoked or changed anywhere (another process, the CLI) is
//! refused within a second; changes made through this server's admin API clear the cache at
//! once. The map is keyed by the secret's SHA-256, never the secret, and is cleared when it
//! grows past 10,000 entries so a flood of made-up keys cannot grow it without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lumen_store::{ApiKey, Store};

use crate::error::ServerError;

/// How long a lookup is trusted.
pub const TTL: Duration = Duration::from_millis(500);
/// Most cached lookups.
const MAX_ENTRIES: usize = 10_000;

/// Secret digest to (when it was looked up, the key found).
type Lookups = HashMap<String, (Instant, Option<Arc<ApiKey>>)>;

/// The cache.
#[derive(Debug, Default)]
pub struct KeyCache {
    map: Mutex<Lookups>,
}

impl KeyCache {
    /// The key whose secret is `secret`, from the cache or `store`.
    pub async fn lookup(
        &self,
        store: &Store,
        secret: &str,
    ) -> Result<Option<Arc<ApiKey>>, ServerError> {
        let digest = lumen_store::secret::digest_hex(secret);
        if let Some((at, key)) = self.lock().get(&digest) {
            if at.elapsed() < TTL {
                return Ok(key.clone());
            }
        }
        let key = store.key_by_secret(secret).await?.map(Arc::new);
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(digest, (Instant::now(), key.clone()));
        Ok(key)
    }

    /// Forgets every lookup (after a change through the admin API).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lookups> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}
