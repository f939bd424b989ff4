//! The crate's error type.

/// What can go wrong while benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A benchmark setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The model failed to load or a forward pass failed.
    #[error(transparent)]
    Model(#[from] lumen_models::ModelError),
    /// The engine failed to load the model, start, or accept a request.
    #[error(transparent)]
    Engine(#[from] lumen_engine::EngineError),
    /// A request failed inside the engine, or a run overran its time limit.
    #[error("{0}")]
    Run(String),
    /// The server URL cannot be used.
    #[error("bad URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Connecting to or talking with the server failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A warm-up request failed, so the server is not usable as configured.
    #[error("warm-up request failed: {0}")]
    Warmup(String),
    /// Every request of a load test failed.
    #[error("every request failed; first error: {0}")]
    AllFailed(String),
}
