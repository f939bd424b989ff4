//! The playground's static serving, in-process without a model: content types, caching,
//! the CSP, versioned asset paths, and `--no-ui` (the API-only router) leaving it out.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use lumen_server::auth::ApiKeys;
use lumen_server::state::Limits;
use lumen_server::{app, ui, AppState};
use tower::ServiceExt;

fn state() -> AppState {
    AppState::new(
        ApiKeys::new(&["k"]),
        Limits {
            max_body_bytes: 1024,
            request_timeout: None,
            max_prompts: 8,
            explain: false,
        },
    )
}

struct Got {
    status: StatusCode,
    header: Box<dyn Fn(header::HeaderName) -> String>,
    body: String,
}

async fn get(router: Router, path: &str) -> Got {
    let resp = router
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        header: Box::new(move |h| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        }),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test]
async fn the_page_is_served_without_a_key_with_a_strict_csp_and_no_cache() {
    let page = get(app(state(), true), "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        (page.header)(header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!((page.header)(header::CACHE_CONTROL), "no-cache");
    let csp = (page.header)(header::CONTENT_SECURITY_POLICY);
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("http"),
        "{csp}"
    );
    assert_eq!((page.header)(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    let v = ui::version();
    assert!(page.body.contains(&format!("/assets/{v}/app.js")));
    // Every asset the page names is there, with its type and a year of caching.
    for (name, ty) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("chat.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let a = get(app(state(), true), &format!("/assets/{v}/{name}")).await;
        assert_eq!(a.status, StatusCode::OK, "{name}");
        assert_eq!((a.header)(header::CONTENT_TYPE), ty, "{name}");
        assert_eq!(
            (a.header)(header::CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        assert!(!a.body.is_empty());
    }
}

#[tokio::test]
async fn another_version_or_an_unknown_file_is_a_404_never_stale_content() {
    let old = get(app(state(), true), "/assets/0123456789abcdef/app.js").await;
    assert_eq!(old.status, StatusCode::NOT_FOUND);
    let v = ui::version();
    let missing = get(app(state(), true), &format!("/assets/{v}/secret.txt")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let traversal = get(app(state(), true), &format!("/assets/{v}/..%2Fui.rs")).await;
    assert_eq!(traversal.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn no_ui_leaves_the_page_out_and_the_api_unchanged() {
    let page = get(app(state(), false), "/").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    let v = ui::version();
    let asset = get(app(state(), false), &format!("/assets/{v}/app.js")).await;
    assert_eq!(asset.status, StatusCode::NOT_FOUND);
    // The API still asks for its key, with or without the page.
    for with_ui in [true, false] {
        let models = get(app(state(), with_ui), "/v1/models").await;
        assert_eq!(models.status, StatusCode::UNAUTHORIZED);
    }
}
