//! A socket whose reads give up when the connection's phase says the client took too long.
//!
//! hyper's own header timeout also fires on idle keep-alive connections and knows nothing of
//! bodies, so the limits live here, under hyper: every read that would wait is given the
//! deadline of the current [`Phase`](super::phase::Phase), and one that passes it fails with
//! `TimedOut`, which makes hyper close the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::phase::{ConnPhase, Timeouts};

/// A TCP stream with phase-dependent read deadlines.
pub struct Guarded {
    inner: TcpStream,
    phase: Arc<ConnPhase>,
    timeouts: Timeouts,
    sleep: Pin<Box<Sleep>>,
}

impl Guarded {
    /// Guards `inner` with `timeouts`, following `phase`.
    pub fn new(inner: TcpStream, phase: Arc<ConnPhase>, timeouts: Timeouts) -> Self {
        let sleep = Box::pin(tokio::time::sleep(timeouts.header));
        Guarded {
            inner,
            phase,
            timeouts,
            sleep,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.phase.on_bytes(n);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, what)) = this.phase.deadline(&this.timeouts) else {
                    return Poll::Pending;
                };
                let deadline = tokio::time::Instant::from_std(deadline);
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::debug!(limit = what, "closing a connection that took too long");
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("{what} timed out"),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
