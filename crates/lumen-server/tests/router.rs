//! The router without a model: error shapes, auth, limits and readiness, driven in-process.
//! (The end-to-end tests with the real model and the official client live in `lumen-cli`.)

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use lumen_server::auth::ApiKeys;
use lumen_server::state::Limits;
use lumen_server::{router, AppState};
use serde_json::Value;
use tower::ServiceExt;

fn state(keys: &[&str]) -> AppState {
    AppState::new(
        ApiKeys::new(keys),
        Limits {
            max_body_bytes: 1024,
            request_timeout: None,
            max_prompts: 8,
            explain: false,
        },
    )
}

async fn call(state: &AppState, req: Request<Body>) -> (StatusCode, Vec<(String, String)>, String) {
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn post(path: &str, content_type: &str, body: impl Into<Body>, key: Option<&str>) -> Request<Body> {
    let mut b = Request::post(path).header(header::CONTENT_TYPE, content_type);
    if let Some(k) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    b.body(body.into()).unwrap()
}

fn error_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let err = v["error"].clone();
    for field in ["message", "type", "param", "code"] {
        assert!(err.get(field).is_some(), "missing {field} in {body}");
    }
    err
}

#[tokio::test]
async fn health_is_open_and_ready_waits_for_models() {
    let s = state(&["k"]);
    let (status, _, _) = call(&s, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(&s, Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&body)["code"], "not_ready");
    let (status, _, body) = call(
        &s,
        post(
            "/v1/chat/completions",
            "application/json",
            r#"{"model":"m","messages":[]}"#,
            Some("k"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    s.set_ready();
    let (status, _, _) = call(&s, Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    s.set_draining();
    let (status, _, body) = call(&s, Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, error_of(&body)["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("shutting_down"))
    );
}

#[tokio::test]
async fn api_needs_a_valid_key() {
    let s = state(&["secret"]);
    s.set_ready();
    for key in [None, Some("wrong"), Some("secre"), Some("secret2")] {
        let (status, _, body) = call(
            &s,
            post("/v1/chat/completions", "application/json", "{}", key),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(error_of(&body)["code"], "invalid_api_key");
    }
    let (status, _, _) = call(&s, Request::get("/v1/models").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&s, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "metrics stay open");
}

#[tokio::test]
async fn bad_bodies_are_openai_shaped_400_and_413() {
    let s = state(&[]);
    s.set_ready();
    let (status, _, body) = call(
        &s,
        post(
            "/v1/chat/completions",
            "application/json",
            "{not json",
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body)["type"], "invalid_request_error");
    let (status, _, body) = call(&s, post("/v1/completions", "text/plain", "{}", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body)["code"], "unsupported_media_type");
    let big = format!(r#"{{"model":"m","prompt":"{}"}}"#, "a".repeat(4096));
    let (status, _, body) = call(&s, post("/v1/completions", "application/json", big, None)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&body)["code"], "request_too_large");
    let (status, _, body) = call(
        &s,
        post(
            "/v1/chat/completions",
            "application/json",
            r#"{"messages":[]}"#,
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body)["param"], "model");
}

#[tokio::test]
async fn unknown_models_and_routes_are_404() {
    let s = state(&[]);
    s.set_ready();
    let req = post(
        "/v1/chat/completions",
        "application/json",
        r#"{"model":"ghost","messages":[{"role":"user","content":"hi"}]}"#,
        None,
    );
    let (status, _, body) = call(&s, req).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let err = error_of(&body);
    assert_eq!(
        (err["code"].as_str(), err["param"].as_str()),
        (Some("model_not_found"), Some("model"))
    );
    let (status, _, body) = call(
        &s,
        Request::get("/v1/models/ghost")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("model_not_found"))
    );
    let (status, _, body) = call(
        &s,
        Request::get("/v2/whatever").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    // Explanations are off unless the operator turns them on (`--enable-explain`).
    let req = post(
        "/v1/explain",
        "application/json",
        r#"{"model":"ghost","prompt":"hi"}"#,
        None,
    );
    let (status, _, body) = call(&s, req).await;
    assert_eq!(
        (status, error_of(&body)["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, _, body) = call(&s, Request::get("/v1/models").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["object"],
        "list"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let s = state(&[]);
    let (status, headers, body) =
        call(&s, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/plain")));
    for name in [
        "lumen:num_requests_running",
        "lumen:kv_cache_usage_perc",
        "lumen:e2e_request_latency_seconds",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{body}"
        );
    }
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_it_is_read() {
    let s = state(&[]);
    s.set_ready();
    // The header says 1 MiB; the body never comes (an empty stream that would hang a reader
    // waiting for the declared bytes is not even polled).
    let req = Request::post("/v1/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "1048576")
        .body(Body::from_stream(futures_util::stream::pending::<
            Result<Vec<u8>, std::io::Error>,
        >()))
        .unwrap();
    let (status, _, body) = tokio::time::timeout(std::time::Duration::from_secs(5), call(&s, req))
        .await
        .expect("answered without reading the body");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&body)["code"], "request_too_large");
}

#[tokio::test]
async fn draining_refuses_api_requests_with_retry_after() {
    let s = state(&[]);
    s.set_ready();
    s.set_draining();
    let (status, headers, body) = call(
        &s,
        post(
            "/v1/completions",
            "application/json",
            r#"{"model":"m","prompt":"x"}"#,
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&body)["code"], "shutting_down");
    assert!(
        headers.iter().any(|(k, v)| k == "retry-after" && v == "1"),
        "{headers:?}"
    );
    let (status, _, _) = call(&s, Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, _) = call(&s, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

fn get(path: &str, key: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(k) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn admin_routes_need_an_admin_unless_the_server_is_open() {
    // Static --api-key keys are users: 403 on /admin/*, 401 without a key.
    let s = state(&["k"]);
    let (status, _, body) = call(&s, get("/admin/models", Some("k"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_of(&body)["code"], "insufficient_permissions");
    let (status, _, _) = call(&s, get("/admin/keys", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // No key configured anywhere: open, /admin included, as before keys existed.
    let open = state(&[]);
    let (status, _, _) = call(&open, get("/admin/models", None)).await;
    assert_eq!(status, StatusCode::OK);
    // Without a database the key routes say so.
    let (status, _, body) = call(&open, get("/admin/keys", None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&body)["code"], "store_unavailable");
}
