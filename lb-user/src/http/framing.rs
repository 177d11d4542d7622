//! Request smuggling refused: a request carrying both `Content-Length` and `Transfer-Encoding`
//! gets a 400, as the issue asks and RFC 9112 §6.1 allows ("a server MAY reject"), instead of
//! being read as chunked (what hyper does: it drops `Content-Length` before the service can see
//! it, and closes the connection after the answer).
//!
//! hyper gives no hook for this, so `Framing` watches the bytes hyper reads from the client and
//! follows HTTP/1's message framing itself: each request head (parsed with httparse, hyper's own
//! parser), then its body by `Content-Length` or chunk by chunk. The n-th head with both headers
//! marks request n; the service, counting the requests hyper hands it in the same order, answers
//! that one 400 without reading its body. Bytes pass through unchanged. Where the watcher can no
//! longer follow (an upgrade, a head hyper will refuse anyway, a malformed chunk) it stops
//! watching, and hyper's own handling stands: the body read as chunked, the connection closed.
//! Written here because no HTTP library offers it; the framing rules are RFC 9112's.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::MAX_HEADERS;

/// Which request of the connection (0-based) is the first to carry both framing headers;
/// `u64::MAX` while none has.
#[derive(Debug)]
pub struct Smuggled(AtomicU64);

impl Default for Smuggled {
    fn default() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }
}

impl Smuggled {
    /// Whether request `n` (0-based, in the order hyper hands them over) is refused.
    pub fn is(&self, n: u64) -> bool {
        self.0.load(Ordering::Acquire) == n
    }

    fn mark(&self, n: u64) {
        let _ = self
            .0
            .compare_exchange(u64::MAX, n, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Where in the client's byte stream the watcher is.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Collecting a request head (the bytes so far).
    Head(Vec<u8>),
    /// Inside a body of known length: bytes left.
    Body(u64),
    /// Collecting a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Inside a chunk's data (bytes left), then its CRLF (2 more).
    ChunkData(u64),
    /// Collecting the trailer section after the last chunk (the current line).
    Trailer(Vec<u8>),
    /// No longer following the framing.
    Off,
}

/// The framing of a request stream, fed the bytes as they come.
#[derive(Debug)]
pub struct Watcher {
    state: State,
    /// Heads seen so far.
    requests: u64,
    smuggled: Arc<Smuggled>,
    /// The longest head followed: beyond it hyper refuses the request itself.
    max_head: usize,
}

/// A chunk-size line longer than this is not one hyper accepts either.
const MAX_CHUNK_LINE: usize = 4096;

impl Watcher {
    pub fn new(smuggled: Arc<Smuggled>, max_head: usize) -> Self {
        Self {
            state: State::Head(Vec::new()),
            requests: 0,
            smuggled,
            max_head,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let taken = match &mut self.state {
                State::Off => return,
                State::Head(head) => {
                    // A head ends at the first empty line; the bytes after it are the body.
                    let before = head.len();
                    let end = find_head_end(head, bytes);
                    let used = end.unwrap_or(bytes.len());
                    head.extend_from_slice(&bytes[..used]);
                    if end.is_some() {
                        let head = std::mem::take(head);
                        self.state = self.after_head(&head);
                    } else if head.len() > self.max_head || before > self.max_head {
                        self.state = State::Off;
                    }
                    used
                }
                State::Body(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                    n as usize
                }
                State::ChunkSize(line) => {
                    let (used, done) = take_line(line, bytes);
                    if done {
                        self.state = match chunk_size(line) {
                            Some(0) => State::Trailer(Vec::new()),
                            Some(n) => State::ChunkData(n.saturating_add(2)),
                            None => State::Off,
                        };
                    } else if line.len() > MAX_CHUNK_LINE {
                        self.state = State::Off;
                    }
                    used
                }
                State::ChunkData(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                    n as usize
                }
                State::Trailer(line) => {
                    let (used, done) = take_line(line, bytes);
                    if done {
                        self.state = if line.as_slice() == b"\r\n" || line.as_slice() == b"\n" {
                            State::Head(Vec::new())
                        } else {
                            State::Trailer(Vec::new())
                        };
                    } else if line.len() > self.max_head {
                        self.state = State::Off;
                    }
                    used
                }
            };
            bytes = &bytes[taken..];
        }
    }

    /// The framing a complete head announces; marks the request if it is smuggling.
    fn after_head(&mut self, head: &[u8]) -> State {
        // Empty lines before a request line are allowed (RFC 9112 §2.2) and skipped by hyper.
        let start = head
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .unwrap_or(head.len());
        if start == head.len() {
            return State::Head(Vec::new());
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head[start..]) {
            Ok(httparse::Status::Complete(_)) => {}
            // hyper refuses what httparse cannot parse: nothing more follows on this connection.
            _ => return State::Off,
        }
        let n = self.requests;
        self.requests += 1;
        let mut te: Option<&[u8]> = None;
        let mut cl = false;
        let mut length: Option<u64> = None;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("content-length") {
                cl = true;
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if te.is_some() && cl {
            self.smuggled.mark(n);
            // The service answers 400 and hyper closes the connection after it.
            return State::Off;
        }
        if upgrade {
            // Whether the upgrade happens is the backend's answer: stop following.
            return State::Off;
        }
        match (te, length) {
            (Some(te), _) if is_chunked(te) => State::ChunkSize(Vec::new()),
            // Not chunked last: hyper answers 400 itself.
            (Some(_), _) => State::Off,
            (None, Some(0)) => State::Head(Vec::new()),
            (None, Some(len)) => State::Body(len),
            (None, None) if cl => State::Off,
            (None, None) => State::Head(Vec::new()),
        }
    }
}

/// Where the head in `head` (so far) followed by `more` ends: the index in `more` just past
/// the empty line, if it ends there. Line ends before any other byte are the empty lines a
/// client may send between requests, not the end of a head.
fn find_head_end(head: &[u8], more: &[u8]) -> Option<usize> {
    let mut last = [0u8; 3];
    let tail = &head[head.len().saturating_sub(3)..];
    last[3 - tail.len()..].copy_from_slice(tail);
    let mut content = head.iter().any(|c| *c != b'\r' && *c != b'\n');
    for (i, &b) in more.iter().enumerate() {
        if b != b'\r' && b != b'\n' {
            content = true;
        }
        let ends = b == b'\n' && (last == *b"\r\n\r" || last[2] == b'\n');
        if ends && content {
            return Some(i + 1);
        }
        last = [last[1], last[2], b];
    }
    None
}

/// Appends bytes up to and including the first `\n`; (bytes used, line complete).
fn take_line(line: &mut Vec<u8>, bytes: &[u8]) -> (usize, bool) {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&bytes[..=i]);
            (i + 1, true)
        }
        None => {
            line.extend_from_slice(bytes);
            (bytes.len(), false)
        }
    }
}

/// A chunk-size line's size (hex, before any `;` extension).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let size = text.split(';').next()?.trim();
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// Whether a Transfer-Encoding value ends with `chunked`.
fn is_chunked(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// The client's stream, with a `Watcher` on the bytes read from it.
pub struct Framing<T> {
    io: T,
    watcher: Watcher,
}

impl<T> Framing<T> {
    pub fn new(io: T, smuggled: Arc<Smuggled>, max_head: usize) -> Self {
        Self {
            io,
            watcher: Watcher::new(smuggled, max_head),
        }
    }

    /// The connection, for an upgrade relayed below HTTP (the watcher has stopped there).
    pub fn into_inner(self) -> T {
        self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Framing<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && this.watcher.state != State::Off
        {
            this.watcher.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Framing<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the refused request, if any.
    fn refused(input: &[u8], step: usize) -> Option<u64> {
        let s = Arc::new(Smuggled::default());
        let mut w = Watcher::new(s.clone(), 16 * 1024);
        for piece in input.chunks(step) {
            w.feed(piece);
        }
        (0..16).find(|n| s.is(*n))
    }

    /// Every split of the input gives the same answer.
    fn check(input: &[u8], want: Option<u64>) {
        for step in 1..=input.len() {
            assert_eq!(
                refused(input, step),
                want,
                "step {step}: {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn both_framing_headers_in_either_order_are_refused() {
        check(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Some(0),
        );
        check(
            b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
            Some(0),
        );
    }

    #[test]
    fn pipelined_requests_are_followed_through_their_bodies() {
        // A body that holds a whole smuggling request is body, not a request.
        let body = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let input = format!(
            "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}\
             POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
             {:x};ext=1\r\n{body}\r\n0\r\nX-Trailer: 1\r\n\r\n\
             \r\nGET /c HTTP/1.1\r\nHost: a\r\n\r\n\
             POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            body.len(),
            body.len()
        );
        check(input.as_bytes(), Some(3));
        // Without the last request nothing is refused.
        let clean = &input[..input.find("POST /d").unwrap()];
        check(clean.as_bytes(), None);
    }

    #[test]
    fn it_stops_following_where_hyper_takes_over() {
        // After an upgrade the bytes are the upgraded protocol's.
        check(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n\
              POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            None,
        );
        // A chunk size that is not hex: hyper fails the request; nothing more is followed.
        check(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\
              POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            None,
        );
        assert_eq!(chunk_size(b"1f;name=value\r\n"), Some(31));
        assert_eq!(chunk_size(b"\r\n"), None);
        assert!(is_chunked(b"gzip, Chunked") && !is_chunked(b"chunked, gzip"));
    }

    #[test]
    fn a_head_longer_than_hyper_takes_is_left_to_hyper() {
        let s = Arc::new(Smuggled::default());
        let mut w = Watcher::new(s.clone(), 64);
        w.feed(&[b'a'; 100]);
        assert_eq!(w.state, State::Off);
    }
}
