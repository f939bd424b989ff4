//! API keys: `Authorization: Bearer KEY`, compared in constant time; the middleware that
//! turns a request's key into its [`RequestCtx`], and the admin check.
//!
//! Keys are kept only as SHA-256 digests. A presented key is hashed and compared with every
//! stored digest by an xor fold over all 32 bytes, without an early exit, so neither the
//! position of the first differing byte nor which key matched shows in the timing. Hashing
//! first also makes the comparison independent of the keys' lengths.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;
use lumen_engine::CallerId;
use sha2::{Digest, Sha256};

use crate::error::ServerError;
use crate::state::AppState;
use crate::tenancy::RequestCtx;

/// The set of accepted API keys (empty: the API is open).
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(key));
    out
}

impl ApiKeys {
    /// Accepts exactly `keys` (none: everything is accepted).
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        ApiKeys {
            digests: keys.iter().map(|k| digest(k.as_ref().as_bytes())).collect(),
        }
    }

    /// Whether no key is required.
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys, in time independent of where it differs.
    pub fn accepts(&self, presented: &str) -> bool {
        self.identify(presented).is_some()
    }

    /// The caller `presented` identifies, if it is one of the keys; every stored digest is
    /// compared in full, so the timing shows neither whether nor which key matched.
    pub fn identify(&self, presented: &str) -> Option<CallerId> {
        let d = digest(presented.as_bytes());
        let mut any = 0u8;
        for k in &self.digests {
            let diff = k.iter().zip(&d).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            // 1 when equal, 0 otherwise, without a branch on the secret.
            any |= 1 ^ ((diff | diff.wrapping_neg()) >> 7);
        }
        (any == 1).then(|| {
            let hex: String = d[..4].iter().map(|b| format!("{b:02x}")).collect();
            CallerId::new(format!("key:{hex}"))
        })
    }
}

/// The credentials of an `Authorization: Bearer KEY` value; the scheme name is
/// case-insensitive (RFC 9110), so `BEARER` and `bearer` work too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware: identifies the caller (401 without an accepted key, unless the server is
/// open), leaves a [`RequestCtx`] in the request's extensions, and writes the caller's
/// `x-ratelimit-*` headers on the response, whatever it is.
pub async fn authenticate(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ServerError> {
    let tenancy = state.tenancy();
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let principal = tenancy.authenticate(presented).await?;
    let ctx = Arc::new(RequestCtx::new(principal));
    let mut req = req;
    if let Some(caller) = ctx.principal.caller() {
        req.extensions_mut().insert(caller);
    }
    req.extensions_mut().insert(ctx.clone());
    let mut resp = next.run(req).await;
    let snap = match (ctx.rate(), ctx.principal.key()) {
        (Some(s), _) => Some(s),
        (None, Some(k)) => Some(tenancy.admission.snapshot(k)),
        (None, None) => None,
    };
    if let Some(s) = snap {
        crate::admission::headers::apply(resp.headers_mut(), &s);
    }
    Ok(resp)
}

/// Middleware for `/admin/*`: 403 unless the caller is an administrator.
pub async fn require_admin(
    ctx: Option<Extension<Arc<RequestCtx>>>,
    req: Request,
    next: Next,
) -> Result<Response, ServerError> {
    match ctx {
        Some(Extension(c)) if c.principal.is_admin() => Ok(next.run(req).await),
        _ => Err(ServerError::Forbidden(
            "This endpoint needs an admin key (--admin-key, LUMEN_ADMIN_KEY, or a key created with role 'admin').".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_keys() {
        let keys = ApiKeys::new(&["alpha", "beta-longer-key"]);
        assert!(keys.accepts("alpha"));
        assert!(keys.accepts("beta-longer-key"));
        assert!(!keys.accepts("alph"));
        assert!(!keys.accepts("alphaa"));
        assert!(!keys.accepts(""));
        assert!(!keys.is_open());
        assert!(ApiKeys::new::<&str>(&[]).is_open());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc "), Some("abc"));
        assert_eq!(bearer_token("bearer\tabc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn callers_are_named_by_a_digest_prefix_not_the_key() {
        let keys = ApiKeys::new(&["alpha", "beta"]);
        let a = keys.identify("alpha").expect("accepted");
        assert_eq!(a.0.len(), "key:".len() + 8);
        assert!(!a.0.contains("alpha"));
        assert_eq!(keys.identify("alpha"), Some(a.clone()), "stable");
        assert_ne!(keys.identify("beta"), Some(a));
        assert_eq!(keys.identify("gamma"), None);
    }
}
