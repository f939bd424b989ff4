//! The playground: a web page at `/` that shows what the model did and why.
//!
//! Design choices:
//! - **Compiled in.** Every file of the page (`crates/lumen-server/ui/`) is `include_bytes!`d,
//!   so the binary alone serves it: nothing to install beside it, nothing fetched from
//!   another origin, and it works offline. The page is plain ES modules (no build step), so
//!   `cargo build` yields it as committed.
//! - **Only the public API.** The page calls the same endpoints as any client
//!   (`/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//!   `/v1/explain`, `/v1/usage`) with the key a person types in; this module adds no endpoint
//!   of its own and serves only files, outside authentication (they hold no data).
//! - **Versioned paths instead of renamed files.** The assets live under
//!   `/assets/<version>/NAME`, where the version is a SHA-256 over all of them, computed once.
//!   Hashing the folder rather than each file keeps the modules' relative `import`s working
//!   without a bundler, and any change to any file changes every URL, so the assets can be
//!   cached for a year (`immutable`) while `index.html` (which names the version) is
//!   `no-cache`. A request for another version is a 404, never stale content.
//! - **Strict CSP.** `default-src 'self'` with no inline script or style and no other
//!   origin; the page sets every style from its stylesheet and every colour through
//!   classes or CSSOM properties, which the policy allows.
//! - **Optional.** `lumen serve --no-ui` leaves these routes out (the paths are then 404s
//!   like any unknown path).

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::error::ServerError;

/// The page's Content-Security-Policy: its own origin only, no inline code.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// One file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file under `/assets/<version>/`.
const ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("key.js", JS),
    asset!("chat.js", JS),
    asset!("tokens.js", JS),
    asset!("explain.js", JS),
    asset!("embed.js", JS),
];

const INDEX_TEMPLATE: &str = include_str!("../ui/index.html");

/// The version in every asset URL: SHA-256 over the names and contents of all assets.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for a in ASSETS {
        h.update(a.name.as_bytes());
        h.update([0]);
        h.update((a.bytes.len() as u64).to_le_bytes());
        h.update(a.bytes);
    }
    h.update(INDEX_TEMPLATE.as_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
});

/// `index.html` with the asset version filled in.
static INDEX: LazyLock<String> = LazyLock::new(|| INDEX_TEMPLATE.replace("{{version}}", &VERSION));

/// The version the current assets are served under.
pub fn version() -> &'static str {
    &VERSION
}

/// Total bytes of the page (`index.html` and every asset), uncompressed.
pub fn page_bytes() -> usize {
    INDEX.len() + ASSETS.iter().map(|a| a.bytes.len()).sum::<usize>()
}

/// The playground's routes (merged into the router unless `--no-ui`).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{version}/{name}", get(asset))
}

/// Headers every page response carries.
fn secured(mut resp: Response, content_type: &'static str, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn index() -> Response {
    // `no-cache`: revalidate every time, so a new binary's page (and asset version) is
    // picked up at once.
    secured(
        INDEX.as_str().into_response(),
        "text/html; charset=utf-8",
        "no-cache",
    )
}

async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    let found = (version == *VERSION)
        .then(|| ASSETS.iter().find(|a| a.name == name))
        .flatten();
    match found {
        Some(a) => secured(
            (StatusCode::OK, a.bytes).into_response(),
            a.content_type,
            "public, max-age=31536000, immutable",
        ),
        None => ServerError::RouteNotFound(format!("/assets/{version}/{name}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_the_current_version_and_every_script_is_a_module_file() {
        assert!(!INDEX.contains("{{version}}"));
        assert!(INDEX.contains(&format!("/assets/{}/app.js", version())));
        // No inline script or style: the CSP would refuse them.
        assert!(!INDEX.contains("<style"));
        assert!(!INDEX.contains(" style="));
        assert!(!INDEX.contains("<script>"));
    }

    #[test]
    fn the_page_stays_under_300_kb() {
        assert!(page_bytes() < 300_000, "{} bytes", page_bytes());
    }

    #[test]
    fn every_file_the_page_names_is_served() {
        // Module imports (`from './x.js'`) and the index's `/assets/{{version}}/NAME` links:
        // a file missing from ASSETS would be a 404 and a broken page.
        let mut named = Vec::new();
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.bytes).unwrap_or_default();
            for part in text.split("from './").skip(1) {
                named.push(part.split('\'').next().unwrap_or_default().to_string());
            }
            assert_eq!(a.content_type, JS, "{}", a.name);
        }
        for part in INDEX_TEMPLATE.split("/assets/{{version}}/").skip(1) {
            named.push(part.split('"').next().unwrap_or_default().to_string());
        }
        assert!(named.len() > ASSETS.len(), "{named:?}");
        for n in named {
            assert!(ASSETS.iter().any(|a| a.name == n), "{n} is not served");
        }
    }
}
