//! `lumen bench serve`: a load generator for any OpenAI-compatible server.
//!
//! C clients, each on its own keep-alive connection, take requests from one shared counter
//! until the requests run out or the time limit passes, and stream every reply. The prompts
//! are a seeded mix ([`PromptMix`]), so two servers see the same requests in the same order.
//! `ignore_eos` is sent (llama-server and vLLM honour it) so every reply runs to
//! `max_tokens` and both servers do the same work.
//!
//! The generator runs on one thread (a current-thread tokio runtime): on a 2-core machine it
//! must take as little CPU from the server under test as it can. Every loop is bounded: by the
//! request count, by `max_duration_s` for starting requests, and by `timeout_s` per request.

mod http;
mod metrics;
mod prompts;
mod sse;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

pub use http::Target;
pub use metrics::{summarise, RequestRecord, ServeReport, Slo};
pub use prompts::PromptMix;
pub use sse::{parse_chunk, ChunkInfo, SseMessage, SseParser};

use crate::BenchError;
use http::{build_request, next_data, read_text, Conn};

/// Which OpenAI route to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/completions` with a plain prompt.
    Completions,
    /// `/v1/chat/completions` with one user message.
    Chat,
}

impl Endpoint {
    /// The route's path.
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// How to load the server.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Base URL, `http://host:port`.
    pub url: String,
    /// Route to call.
    pub endpoint: Endpoint,
    /// Model name to send; `None` asks `/v1/models` and takes the first.
    pub model: Option<String>,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Timed requests in all.
    pub requests: usize,
    /// `max_tokens` of every request.
    pub max_tokens: usize,
    /// Sampling temperature sent.
    pub temperature: f32,
    /// Send `ignore_eos: true`.
    pub ignore_eos: bool,
    /// Untimed requests sent one at a time first.
    pub warmup: usize,
    /// No request starts after this many seconds.
    pub max_duration_s: f64,
    /// A request is abandoned (and counted as an error) after this many seconds.
    pub timeout_s: f64,
    /// The prompts.
    pub mix: PromptMix,
    /// Objectives for goodput.
    pub slo: Slo,
    /// Bearer token, if the server wants one.
    pub api_key: Option<String>,
    /// Fields merged into every request body (they win over the defaults).
    pub extra_body: serde_json::Map<String, serde_json::Value>,
}

impl ServeConfig {
    /// Defaults for `url`: completions, 16 clients, 64 requests of 128 tokens.
    pub fn new(url: impl Into<String>) -> Self {
        ServeConfig {
            url: url.into(),
            endpoint: Endpoint::Completions,
            model: None,
            concurrency: 16,
            requests: 64,
            max_tokens: 128,
            temperature: 0.0,
            ignore_eos: true,
            warmup: 1,
            max_duration_s: 600.0,
            timeout_s: 300.0,
            mix: PromptMix::default(),
            slo: Slo::default(),
            api_key: None,
            extra_body: serde_json::Map::new(),
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Config(m.to_string()));
        if self.concurrency == 0 || self.concurrency > 4096 {
            return bad("concurrency must be between 1 and 4096");
        }
        if self.requests == 0 || self.requests > 1_000_000 {
            return bad("requests must be between 1 and 1000000");
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1");
        }
        if self.warmup > 1000 {
            return bad("at most 1000 warm-up requests");
        }
        if !(self.timeout_s > 0.0 && self.max_duration_s > 0.0) {
            return bad("time limits must be positive");
        }
        Ok(())
    }

    fn body(&self, model: Option<&str>, prompt: &str) -> Vec<u8> {
        let mut body = match self.endpoint {
            Endpoint::Completions => json!({ "prompt": prompt }),
            Endpoint::Chat => json!({ "messages": [{ "role": "user", "content": prompt }] }),
        };
        body["max_tokens"] = json!(self.max_tokens);
        body["temperature"] = json!(self.temperature);
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        if let Some(m) = model {
            body["model"] = json!(m);
        }
        for (k, v) in &self.extra_body {
            body[k.as_str()] = v.clone();
        }
        body.to_string().into_bytes()
    }
}

/// Runs a load test on a private single-threaded runtime and returns its report.
pub fn run_serve_bench(config: &ServeConfig) -> Result<ServeReport, BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_serve_bench_async(config))
}

/// Runs a load test on the caller's tokio runtime.
pub async fn run_serve_bench_async(config: &ServeConfig) -> Result<ServeReport, BenchError> {
    config.validate()?;
    let target = Target::parse(&config.url)?;
    let addr = target.resolve().await?;
    let model = match &config.model {
        Some(m) => Some(m.clone()),
        None => first_model(addr, &target, config.api_key.as_deref()).await,
    };
    let prompts = config.mix.prompts(config.requests + config.warmup);
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        prompts
            .iter()
            .map(|p| Bytes::from(config.body(model.as_deref(), p)))
            .collect(),
    );
    let timeout = Duration::from_secs_f64(config.timeout_s);
    let route = config.endpoint.route();

    // Warm-up, one at a time; a failure here means the server is not usable.
    let mut conn = None;
    for body in &bodies[config.requests..] {
        let rec = one_request(
            &mut conn,
            addr,
            &target,
            route,
            body.clone(),
            config.api_key.as_deref(),
            Instant::now(),
            timeout,
        )
        .await;
        if let Some(e) = rec.error {
            return Err(BenchError::Warmup(e));
        }
    }
    drop(conn);

    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let stop_at = start + Duration::from_secs_f64(config.max_duration_s);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..config.concurrency.min(config.requests) {
        let (next, bodies, target, key) = (
            next.clone(),
            bodies.clone(),
            target.clone(),
            config.api_key.clone(),
        );
        let requests = config.requests;
        tasks.spawn(async move {
            let mut conn = None;
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || Instant::now() >= stop_at {
                    break;
                }
                out.push(
                    one_request(
                        &mut conn,
                        addr,
                        &target,
                        route,
                        bodies[i].clone(),
                        key.as_deref(),
                        start,
                        timeout,
                    )
                    .await,
                );
            }
            out
        });
    }
    let mut records = Vec::with_capacity(config.requests);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(recs) => records.extend(recs),
            Err(e) => records.push(RequestRecord {
                error: Some(format!("client task failed: {e}")),
                finished_at: start.elapsed().as_secs_f64(),
                ..Default::default()
            }),
        }
    }
    if !records.is_empty() && records.iter().all(|r| r.error.is_some()) {
        return Err(BenchError::AllFailed(
            records[0].error.clone().unwrap_or_default(),
        ));
    }
    let mut report = summarise(&records, config.slo);
    report.url = config.url.clone();
    report.endpoint = route.to_string();
    report.model = model.unwrap_or_default();
    report.concurrency = config.concurrency;
    report.max_tokens = config.max_tokens;
    Ok(report)
}

/// The first model id `/v1/models` lists, if the server answers.
async fn first_model(
    addr: std::net::SocketAddr,
    target: &Target,
    api_key: Option<&str>,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = Conn::open(addr).await.ok()?;
    let req = build_request(target, "GET", "/v1/models", None, api_key).ok()?;
    let mut resp = conn.send(req, deadline).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let text = read_text(resp.body_mut(), deadline).await.ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("data")?
        .as_array()?
        .first()?
        .get("id")?
        .as_str()
        .map(str::to_string)
}

/// Sends one streaming request on `conn` (opening it if needed) and measures it.
#[allow(clippy::too_many_arguments)]
async fn one_request(
    conn: &mut Option<Conn>,
    addr: std::net::SocketAddr,
    target: &Target,
    route: &str,
    body: Bytes,
    api_key: Option<&str>,
    epoch: Instant,
    timeout: Duration,
) -> RequestRecord {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut rec = RequestRecord::default();
    if let Err(e) = stream_into(
        &mut rec, conn, addr, target, route, body, api_key, t0, deadline,
    )
    .await
    {
        rec.error = Some(e);
        // The connection's state is unknown after a failure: start afresh next time.
        *conn = None;
    }
    let end = Instant::now();
    rec.e2e = (end - t0).as_secs_f64();
    rec.finished_at = (end - epoch).as_secs_f64();
    rec
}

#[allow(clippy::too_many_arguments)]
async fn stream_into(
    rec: &mut RequestRecord,
    conn: &mut Option<Conn>,
    addr: std::net::SocketAddr,
    target: &Target,
    route: &str,
    body: Bytes,
    api_key: Option<&str>,
    t0: Instant,
    deadline: Instant,
) -> Result<(), String> {
    let reused = conn.as_ref().is_some_and(Conn::is_open);
    if !reused {
        *conn = Some(Conn::open(addr).await?);
    }
    let c = conn.as_mut().ok_or("no connection")?;
    let mut resp = match c
        .send(
            build_request(target, "POST", route, Some(body.clone()), api_key)?,
            deadline,
        )
        .await
    {
        Ok(r) => r,
        // A server may close an idle keep-alive connection just as a request goes out
        // (llama-server's HTTP library does): retry once, on a fresh connection.
        Err(_) if reused && Instant::now() < deadline => {
            let c = conn.insert(Conn::open(addr).await?);
            c.send(
                build_request(target, "POST", route, Some(body), api_key)?,
                deadline,
            )
            .await?
        }
        Err(e) => return Err(e),
    };
    if !resp.status().is_success() {
        let text = read_text(resp.body_mut(), deadline)
            .await
            .unwrap_or_default();
        return Err(format!(
            "HTTP {}: {}",
            resp.status(),
            text.chars().take(300).collect::<String>()
        ));
    }
    let mut parser = SseParser::new();
    let mut msgs = Vec::new();
    let mut last: Option<Instant> = None;
    let mut usage = None;
    let mut done = false;
    // Bounded by the deadline inside next_data: a stalled stream ends as an error.
    loop {
        let data = next_data(resp.body_mut(), deadline).await?;
        let now = Instant::now();
        match &data {
            Some(bytes) => parser.push(bytes, &mut msgs)?,
            None => parser.finish(&mut msgs),
        }
        for msg in msgs.drain(..) {
            let chunk = parse_chunk(&msg);
            if let Some(e) = chunk.error {
                return Err(format!("in stream: {e}"));
            }
            done |= chunk.done;
            usage = chunk.completion_tokens.or(usage);
            if chunk.text_choices > 0 {
                match last {
                    None => rec.ttft = Some((now - t0).as_secs_f64()),
                    Some(prev) => rec.itl.push((now - prev).as_secs_f64()),
                }
                last = Some(now);
                rec.text_chunks += chunk.text_choices as u64;
            }
        }
        if data.is_none() {
            break;
        }
    }
    rec.output_tokens = usage.unwrap_or(rec.text_chunks);
    if rec.text_chunks == 0 && rec.output_tokens == 0 {
        return Err(if done {
            "the stream carried no tokens".into()
        } else {
            "the stream ended without data".into()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies() {
        let mut c = ServeConfig::new("http://127.0.0.1:1");
        let v: Value = serde_json::from_slice(&c.body(Some("m"), "hi")).unwrap();
        assert_eq!(v["prompt"], "hi");
        assert_eq!(v["model"], "m");
        assert_eq!(v["stream"], true);
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["max_tokens"], 128);
        assert_eq!(v["stream_options"]["include_usage"], true);
        c.endpoint = Endpoint::Chat;
        c.ignore_eos = false;
        let v: Value = serde_json::from_slice(&c.body(None, "hi")).unwrap();
        assert_eq!(v["messages"][0]["content"], "hi");
        assert!(v.get("model").is_none() && v.get("ignore_eos").is_none());
    }

    #[test]
    fn settings_are_checked() {
        let ok = ServeConfig::new("http://127.0.0.1:1");
        assert!(ok.validate().is_ok());
        assert!(ServeConfig {
            concurrency: 0,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(ServeConfig {
            requests: 0,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(ServeConfig {
            max_tokens: 0,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(ServeConfig {
            timeout_s: 0.0,
            ..ok
        }
        .validate()
        .is_err());
    }
}
