//! The per-connection service: runs the router and moves the connection's phase along as a
//! request's head, body and response go by.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tower::ServiceExt;

use super::phase::{ConnPhase, Phase};

/// Serves one request of a connection whose phase is `phase`.
pub async fn call(
    app: Router,
    phase: Arc<ConnPhase>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    // The head is parsed: the body (if any) is what the client still owes.
    phase.set(if req.body().is_end_stream() {
        Phase::Busy
    } else {
        Phase::Body
    });
    let req = req.map(|inner| {
        Body::new(RequestBody {
            inner,
            phase: phase.clone(),
        })
    });
    let resp = app.oneshot(req).await?;
    // Whatever the handler left unread, the client is no longer the slow one.
    phase.set(Phase::Busy);
    Ok(resp.map(|inner| {
        Body::new(ResponseBody {
            inner,
            phase: Some(phase),
        })
    }))
}

/// The request body; its end moves the connection to [`Phase::Busy`].
struct RequestBody {
    inner: Incoming,
    phase: Arc<ConnPhase>,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.phase.set(Phase::Busy);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body; when it is sent (or dropped) the connection waits for the next request.
struct ResponseBody {
    inner: Body,
    phase: Option<Arc<ConnPhase>>,
}

impl ResponseBody {
    fn done(&mut self) {
        if let Some(p) = self.phase.take() {
            p.set(Phase::KeepAlive);
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.done();
    }
}
