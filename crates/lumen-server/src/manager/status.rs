//! What `/v1/models`, `/admin/models` and `/metrics` show of each model.

use std::sync::Arc;
use std::time::Instant;

use lumen_engine::registry::ModelKind;

use super::{KeepAlive, ModelManager, Slot};
use crate::metrics::Histogram;
use crate::state::ServedModel;

/// A model's state as `/v1/models` and `/admin/models` show it.
#[derive(Clone)]
pub struct ModelStatus {
    /// Its name.
    pub name: String,
    /// Chat or embedding.
    pub kind: ModelKind,
    /// `loaded`, `loading`, `unloading` or `unloaded`.
    pub state: &'static str,
    /// Bytes it holds (or will hold once loaded).
    pub memory_bytes: u64,
    /// The engine, when loaded.
    pub served: Option<ServedModel>,
    /// Seconds since its last request, when loaded and idle.
    pub idle_seconds: Option<f64>,
    /// Requests holding or running on it.
    pub busy: bool,
    /// Its keep-alive now.
    pub keep_alive: KeepAlive,
    /// Times it was loaded.
    pub loads: u64,
    /// The last load error, if its last load failed.
    pub last_error: Option<String>,
    /// Load durations.
    pub load_seconds: Arc<Histogram>,
}

impl ModelManager {
    /// Every model's state, by name.
    pub fn statuses(&self) -> Vec<ModelStatus> {
        let now = Instant::now();
        self.lock()
            .values()
            .map(|e| {
                let busy = e.busy();
                ModelStatus {
                    name: e.loc.name.clone(),
                    kind: e.loc.kind,
                    state: match e.slot {
                        Slot::Unloaded => "unloaded",
                        Slot::Loading { .. } => "loading",
                        Slot::Loaded(_) => "loaded",
                        Slot::Unloading => "unloading",
                    },
                    memory_bytes: e.bytes,
                    served: match &e.slot {
                        Slot::Loaded(l) => Some(l.served.clone()),
                        _ => None,
                    },
                    idle_seconds: (matches!(e.slot, Slot::Loaded(_)) && !busy)
                        .then(|| now.duration_since(e.last_used).as_secs_f64()),
                    busy,
                    keep_alive: e.keep_alive,
                    loads: e.loads,
                    last_error: e.last_error.clone(),
                    load_seconds: e.load_seconds.clone(),
                }
            })
            .collect()
    }
}
