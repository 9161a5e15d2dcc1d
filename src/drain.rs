//! Cutting connections off at the end of a drain. A SIGTERM lets calls in
//! flight finish (HTTP/2 GOAWAY: no new call is taken); the ones still
//! running at `shutdown.drain_timeout_secs` are cut off by closing their
//! connections, so that every task holding the store ends and the store
//! closes (and checkpoints) before the process exits. A call cut off was
//! never answered, so nothing it did was acknowledged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Closes every connection made [`Cuttable`] under it.
#[derive(Clone, Debug, Default)]
pub struct CutOff(CancellationToken);

impl CutOff {
    pub fn new() -> Self {
        Self::default()
    }

    /// `stream`, closed when [`CutOff::cut`] is called.
    pub fn wrap<S>(&self, stream: S) -> Cuttable<S> {
        Cuttable {
            inner: stream,
            cut: Box::pin(self.0.clone().cancelled_owned()),
        }
    }

    /// Every connection fails its next read and write (and a read waiting
    /// for data fails now).
    pub fn cut(&self) {
        self.0.cancel();
    }
}

/// A connection [`CutOff::cut`] can close.
pub struct Cuttable<S> {
    inner: S,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

fn cut_off() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "cut off at the end of the drain (shutdown.drain_timeout_secs)",
    )
}

impl<S> Cuttable<S> {
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        self.cut.as_mut().poll(cx).is_ready()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Cuttable<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Cuttable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cuttable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_cut_fails_a_pending_read_and_every_later_write() {
        let (a, mut b) = tokio::io::duplex(64);
        let cut = CutOff::new();
        let mut a = cut.wrap(a);
        b.write_all(b"x").await.unwrap_or_else(|e| panic!("{e}"));
        let mut one = [0u8; 1];
        a.read_exact(&mut one)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            let read = a.read(&mut buf).await;
            (a, read)
        });
        cut.cut();
        let (mut a, read) = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .unwrap_or_else(|_| panic!("the pending read did not end"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionAborted)
        );
        let written = a.write_all(b"y").await;
        assert_eq!(
            written.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionAborted)
        );
    }
}
