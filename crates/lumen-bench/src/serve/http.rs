//! A minimal HTTP/1.1 client on hyper: one keep-alive connection per simulated user, request
//! bodies sent whole, response bodies read frame by frame with the time each frame arrived.
//!
//! Plain `http://` only: the load generator is meant for a server on this machine or its
//! private network, and TLS would put the client's crypto in the numbers.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant as TokioInstant};

use crate::BenchError;

/// Most bytes read from a response that is not a stream (an error body, `/v1/models`).
const MAX_PLAIN_BODY: usize = 1 << 20;

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port` as given, for the `Host` header.
    pub authority: String,
    /// Path prefix before `/v1/...`, without a trailing slash (usually empty).
    pub base_path: String,
}

impl Target {
    /// Parses `http://host[:port][/prefix]`; a trailing `/v1` is dropped, since routes add it.
    pub fn parse(url: &str) -> Result<Target, BenchError> {
        let bad = |reason: &str| BenchError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("missing host, or credentials in the URL"));
        }
        let has_port = if authority.starts_with('[') {
            authority.contains("]:")
        } else {
            authority.contains(':')
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let mut base = path.trim_end_matches('/').to_string();
        if base.ends_with("/v1") {
            base.truncate(base.len() - 3);
        }
        if base.contains(['?', '#']) {
            return Err(bad("query strings and fragments are not supported"));
        }
        Ok(Target {
            authority,
            base_path: base,
        })
    }

    /// The full path of an API route such as `/v1/completions`.
    pub fn path(&self, route: &str) -> String {
        format!("{}{route}", self.base_path)
    }

    /// Resolves the host to a socket address.
    pub async fn resolve(&self) -> Result<SocketAddr, BenchError> {
        let mut addrs = tokio::net::lookup_host(self.authority.as_str()).await?;
        addrs.next().ok_or_else(|| BenchError::Url {
            url: self.authority.clone(),
            reason: "the host name did not resolve".into(),
        })
    }
}

/// One keep-alive connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Opens a connection (Nagle off: streamed tokens should not wait for each other).
    pub async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("set_nodelay: {e}"))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or the sender is dropped.
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }

    /// Whether the connection can take another request.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends a request and returns the response head with its body still to read.
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<Response<Incoming>, String> {
        let deadline = TokioInstant::from_std(deadline);
        timeout_at(deadline, self.sender.ready())
            .await
            .map_err(|_| "timed out waiting for the connection".to_string())?
            .map_err(|e| format!("connection: {e}"))?;
        timeout_at(deadline, self.sender.send_request(req))
            .await
            .map_err(|_| "timed out waiting for the response".to_string())?
            .map_err(|e| format!("request: {e}"))
    }
}

/// A request with the headers every call carries.
pub fn build_request(
    target: &Target,
    method: &str,
    route: &str,
    body: Option<Bytes>,
    api_key: Option<&str>,
) -> Result<Request<Full<Bytes>>, String> {
    let mut b = Request::builder()
        .method(method)
        .uri(target.path(route))
        .header("host", &target.authority)
        .header("user-agent", "lumen-bench");
    if body.is_some() {
        b = b
            .header("content-type", "application/json")
            .header("accept", "text/event-stream");
    }
    if let Some(k) = api_key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(body.unwrap_or_default()))
        .map_err(|e| format!("building the request: {e}"))
}

/// The next body frame's data (empty for trailers), `None` at the end of the body.
pub async fn next_data(body: &mut Incoming, deadline: Instant) -> Result<Option<Bytes>, String> {
    match timeout_at(TokioInstant::from_std(deadline), body.frame()).await {
        Err(_) => Err("timed out reading the stream".into()),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(format!("reading the stream: {e}")),
        Ok(Some(Ok(frame))) => Ok(Some(frame.into_data().unwrap_or_default())),
    }
}

/// Reads a whole (small) body as text, up to [`MAX_PLAIN_BODY`] bytes.
pub async fn read_text(body: &mut Incoming, deadline: Instant) -> Result<String, String> {
    let mut buf = Vec::new();
    while let Some(data) = next_data(body, deadline).await? {
        buf.extend_from_slice(&data);
        if buf.len() > MAX_PLAIN_BODY {
            buf.truncate(MAX_PLAIN_BODY);
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.base_path.as_str()),
            ("127.0.0.1:8080", "")
        );
        assert_eq!(t.path("/v1/completions"), "/v1/completions");
        let t = Target::parse("http://localhost:9000/v1/").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.base_path.as_str()),
            ("localhost:9000", "")
        );
        let t = Target::parse("http://host/api/v1").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path("/v1/models").as_str()),
            ("host:80", "/api/v1/models")
        );
        assert_eq!(
            Target::parse("http://[::1]:8080").unwrap().authority,
            "[::1]:8080"
        );
        assert_eq!(Target::parse("http://[::1]").unwrap().authority, "[::1]:80");
        assert!(Target::parse("https://x:1").is_err());
        assert!(Target::parse("127.0.0.1:8080").is_err());
        assert!(Target::parse("http://").is_err());
        assert!(Target::parse("http://u:p@h:1").is_err());
        assert!(Target::parse("http://h:1/x?y=1").is_err());
    }
}
