//! Idle connections to tasks, kept for the next request to the same task. Every request is
//! still routed on its own (the rule's next backend in turn, as marathon-lb's
//! `http-server-close` routes it); only the connection to the task it goes to is reused when one
//! is idle. That spares the task an accept and a close, and the agent a connection in TIME_WAIT,
//! per request: HAProxy in marathon-lb's mode opens and closes one for each.
//!
//! A connection goes back to the pool once its response has been read to the end; one the task
//! closed, answered `Connection: close` on, or that carried an upgrade never does, nor one
//! authenticated per connection (NTLM, Negotiate), which must not serve another client. Idle
//! ones are dropped after `IDLE_FOR`, below the keep-alive timeouts of common servers, so that
//! the task seldom closes one as it is reused (a bodiless GET, HEAD or OPTIONS that meets such a
//! close is sent again on a new connection); and those of tasks that leave every rule go when
//! the routes change.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddrV4,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    client::conn::http1::SendRequest,
};

use super::proxy::Body;
use crate::task::AbortOnDrop;

/// How long a connection may wait idle in the pool: marathon-lb's `timeout http-keep-alive`,
/// below the keep-alive timeouts of common servers (gunicorn 2 s, Apache httpd and Node.js
/// 5 s, nginx 75 s).
pub const IDLE_FOR: Duration = Duration::from_secs(1);
/// Idle connections kept per task; more are closed.
const MAX_IDLE_PER_BACKEND: usize = 64;

/// Idle connections by task address.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddrV4, Vec<IdleConn>>>,
}

#[derive(Debug)]
struct IdleConn {
    sender: SendRequest<Body>,
    since: Instant,
}

impl IdleConn {
    fn usable(&self, now: Instant) -> bool {
        now.duration_since(self.since) < IDLE_FOR && !self.sender.is_closed()
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddrV4, Vec<IdleConn>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection to `backend` that can take a request now, the most recently used
    /// first. One still busy (its response was read, but the request's body is still going
    /// out, as when a task answers an upload early) stays for later: no request waits behind
    /// another client's.
    pub fn take(&self, backend: SocketAddrV4) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        let list = idle.get_mut(&backend)?;
        let now = Instant::now();
        list.retain(|c| c.usable(now));
        let ready = list.iter().rposition(|c| c.sender.is_ready())?;
        Some(list.remove(ready).sender)
    }

    /// Keeps `sender` for the next request to `backend`, unless it is closed or the pool full.
    pub fn put(&self, backend: SocketAddrV4, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let list = idle.entry(backend).or_default();
        let now = Instant::now();
        list.retain(|c| c.usable(now));
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(IdleConn { sender, since: now });
        }
    }

    /// Closes the idle connections of tasks not in `backends`, and any past `IDLE_FOR`.
    pub fn keep_only(&self, backends: &HashSet<SocketAddrV4>) {
        self.retain(|backend| backends.contains(backend));
    }

    /// Closes the idle connections past `IDLE_FOR` or closed by their task.
    pub fn prune(&self) {
        self.retain(|_| true);
    }

    fn retain(&self, mut keep: impl FnMut(&SocketAddrV4) -> bool) {
        let mut idle = self.lock();
        let now = Instant::now();
        idle.retain(|backend, list| {
            list.retain(|c| c.usable(now));
            keep(backend) && !list.is_empty()
        });
    }

    /// Idle connections held (for tests).
    pub fn idle(&self) -> usize {
        let idle = self.lock();
        idle.values().map(Vec::len).sum()
    }
}

/// Prunes `pool` every half `IDLE_FOR` until dropped.
pub fn pruner(pool: Arc<Pool>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut every = tokio::time::interval(IDLE_FOR / 2);
        loop {
            every.tick().await;
            pool.prune();
        }
    }))
}

/// A response body that hands its connection back to the pool when it has been read to the
/// end. Dropped before that (the client went away mid-body), it takes the connection with it.
pub struct Returning {
    inner: Incoming,
    back: Option<(Arc<Pool>, SocketAddrV4, SendRequest<Body>)>,
}

impl Returning {
    pub fn new(
        inner: Incoming,
        pool: Arc<Pool>,
        backend: SocketAddrV4,
        sender: SendRequest<Body>,
    ) -> Self {
        let mut body = Self {
            inner,
            back: Some((pool, backend, sender)),
        };
        // A body that is already complete (none, or a HEAD's) may never be polled.
        if body.inner.is_end_stream() {
            body.give_back();
        }
        body
    }

    fn give_back(&mut self) {
        if let Some((pool, backend, sender)) = self.back.take() {
            pool.put(backend, sender);
        }
    }
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            // hyper stops polling a body once it reports its end, so the last frame counts.
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
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

#[cfg(test)]
mod tests {
    use hyper_util::rt::TokioIo;

    use super::*;

    /// A client connection over an in-memory pipe, its driver running.
    async fn sender() -> (SendRequest<Body>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        sender.ready().await.expect("ready");
        (sender, theirs)
    }

    #[tokio::test]
    async fn connections_are_kept_per_task_until_closed_expired_or_their_task_leaves() {
        let a: SocketAddrV4 = "192.168.0.1:80".parse().unwrap();
        let b: SocketAddrV4 = "192.168.0.2:80".parse().unwrap();
        let pool = Pool::default();
        assert!(pool.take(a).is_none());
        let (s1, _peer1) = sender().await;
        let (s2, _peer2) = sender().await;
        pool.put(a, s1);
        pool.put(b, s2);
        assert_eq!(pool.idle(), 2);
        assert!(pool.take(b).is_some(), "kept for its task");
        assert!(pool.take(b).is_none(), "and handed out once");
        // A task that leaves every rule takes its idle connections with it.
        pool.keep_only(&HashSet::from([b]));
        assert!(pool.take(a).is_none());
        // One the task closed is not kept.
        let (s3, peer3) = sender().await;
        drop(peer3);
        while !s3.is_closed() {
            tokio::task::yield_now().await;
        }
        pool.put(b, s3);
        assert_eq!(pool.idle(), 0);
        // One idle past IDLE_FOR is not handed out, and is pruned without any request.
        let expired = |sender| IdleConn {
            sender,
            since: Instant::now() - IDLE_FOR,
        };
        let (s4, _peer4) = sender().await;
        let (s5, _peer5) = sender().await;
        pool.idle.lock().unwrap().insert(b, vec![expired(s4)]);
        assert!(pool.take(b).is_none());
        pool.idle.lock().unwrap().insert(b, vec![expired(s5)]);
        assert_eq!(pool.idle(), 1);
        pool.prune();
        assert_eq!(pool.idle(), 0, "pruned");
    }
}
