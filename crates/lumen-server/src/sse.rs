//! Server-sent events in OpenAI's streaming format: `data: {chunk}` frames and a final
//! `data: [DONE]`.
//!
//! The response body is a stream that owns the [`Generation`]; when the client goes away,
//! hyper drops the body, the generation and with it the engine streams, and the engine
//! cancels the request before its next step. An error after the headers went out is sent as
//! a `data: {"error": ...}` frame before `[DONE]`, as vLLM does.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::api::generate::ChunkFormat;
use crate::gen::Generation;

struct SseState<F> {
    gen: Generation,
    fmt: F,
    queue: VecDeque<String>,
    finished: bool,
}

fn frame<T: Serialize>(v: &T) -> String {
    match serde_json::to_string(v) {
        Ok(json) => format!("data: {json}\n\n"),
        // Plain structs of strings and numbers always serialize; say so if one did not.
        Err(e) => format!(
            "data: {}\n\n",
            crate::error::ServerError::Internal(format!("chunk serialization failed: {e}")).body()
        ),
    }
}

impl<F: ChunkFormat> SseState<F> {
    fn push_all(&mut self, chunks: Vec<crate::api::response::Envelope<F::Choice>>) {
        self.queue.extend(chunks.iter().map(frame));
    }

    async fn next_frame(&mut self) -> Option<String> {
        loop {
            if let Some(f) = self.queue.pop_front() {
                return Some(f);
            }
            if self.finished {
                return None;
            }
            let mut out = Vec::new();
            match self.gen.next().await {
                Ok(Some(ev)) => {
                    self.fmt.event(ev, &mut out);
                    self.push_all(out);
                }
                Ok(None) => {
                    if self.fmt.include_usage() {
                        out.push(self.fmt.usage_chunk(self.gen.usage()));
                    }
                    self.push_all(out);
                    self.queue.push_back("data: [DONE]\n\n".into());
                    self.finished = true;
                }
                Err(e) => {
                    self.queue.push_back(frame(&e.body()));
                    self.queue.push_back("data: [DONE]\n\n".into());
                    self.finished = true;
                }
            }
        }
    }
}

/// A `text/event-stream` response streaming `gen` through `fmt`.
pub fn stream_response<F: ChunkFormat>(gen: Generation, mut fmt: F) -> Response {
    let mut first = Vec::new();
    fmt.start(&mut first);
    let mut state = SseState {
        gen,
        fmt,
        queue: VecDeque::new(),
        finished: false,
    };
    state.push_all(first);
    let body = futures_util::stream::unfold(state, |mut st| async move {
        st.next_frame().await.map(|f| (Ok::<_, Infallible>(f), st))
    });
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
