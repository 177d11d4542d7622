//! HAProxy's `timeout client` / `timeout server` as inactivity: a connection on which nothing
//! moves, in either direction, for the timeout fails with `TimedOut`. Progress either way
//! restarts the clock, so a long download the client keeps reading never times out, while a
//! client that neither sends nor reads (or a backend that stalls mid-body) is dropped.
//! hyper has timeouts for request heads only; tokio-io-timeout times each direction apart,
//! which would cut a download whose client sends nothing meanwhile.
use std::{
    future::Future as _,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep, sleep_until},
};

pub struct Idle<T> {
    io: T,
    timeout: Duration,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Idle<T> {
    pub fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            last: Instant::now(),
            timer: None,
        }
    }

    pub fn into_inner(self) -> T {
        self.io
    }

    /// Called when an operation would block: Ready(error) once the connection has been idle
    /// for the whole timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let deadline = self.last + self.timeout;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= self.last + self.timeout {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no traffic for {:?}", self.timeout),
                ));
            }
        }
    }

    fn progress<R>(&mut self, r: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        self.progress(r, cx)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_and_traffic_keeps_it_alive() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Idle::new(a, Duration::from_secs(60));
        // Traffic every 40 s for two minutes: never idle for 60 s.
        let writer = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(40)).await;
                b.write_all(b"x").await.unwrap();
            }
            b
        });
        let mut buf = [0u8; 1];
        for _ in 0..3 {
            a.read_exact(&mut buf)
                .await
                .expect("traffic keeps it alive");
        }
        let _b = writer.await.unwrap();
        let start = Instant::now();
        let e = a.read(&mut buf).await.expect_err("silence times out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }
}
