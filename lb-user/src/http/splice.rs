//! An upgraded connection (WebSocket and the like) relayed in the kernel: `splice(2)` moves
//! each direction's bytes from one socket into a pipe and from the pipe into the other socket,
//! so they are never copied into the daemon's memory. HAProxy does the same with `option
//! splice-auto`. Written here with `libc` because tokio has no splice and the crates that wrap
//! it are small single-author ones; the loop is tokio's own readiness API (`try_io`).
//!
//! The tunnel obeys the front end's inactivity rule (`idle.rs`): when no byte has moved in
//! either direction for the timeout, both connections are closed. A direction that reaches
//! end of stream half-closes the other socket, as `copy_bidirectional` does.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::Interest,
    net::TcpStream,
    time::{Instant, sleep_until},
};

/// Bytes a pipe holds, and the most one `splice` call moves (Linux's default pipe is 64 KiB;
/// a larger one halves the system calls of a bulk transfer and stays under the unprivileged
/// `fs.pipe-max-size` of 1 MiB).
const PIPE_BYTES: usize = 256 * 1024;

/// Relays `a` and `b` until both directions have ended, one fails, or nothing moved for
/// `idle`. `a_early` and `b_early` are bytes already read from `a` and `b` (after the upgrade's
/// head) and not yet passed on. Returns the bytes moved a → b and b → a.
pub async fn relay(
    a: TcpStream,
    a_early: &[u8],
    b: TcpStream,
    b_early: &[u8],
    idle: Duration,
) -> io::Result<(u64, u64)> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let both = async {
        tokio::try_join!(
            one_way(&a, &b, a_early, &touch),
            one_way(&b, &a, b_early, &touch)
        )
    };
    let watchdog = async {
        loop {
            let at = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= at {
                return io::Error::new(io::ErrorKind::TimedOut, format!("no traffic for {idle:?}"));
            }
            sleep_until(at).await;
        }
    };
    tokio::select! {
        moved = both => moved,
        e = watchdog => Err(e),
    }
}

/// What one read from a socket gave: bytes spliced into the pipe, or read past TCP's urgent
/// mark into a buffer.
enum Got {
    Spliced(usize),
    Read(usize),
}

/// `from` → `to` through a pipe of its own, `early` first; half-closes `to` at `from`'s end.
/// Every byte moved, even part of a pipe's worth, counts as activity for the watchdog.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    early: &[u8],
    touch: &impl Fn(),
) -> io::Result<u64> {
    write_all(to, early).await?;
    touch();
    let pipe = Pipe::new()?;
    let mut moved = early.len() as u64;
    let mut past_mark = [0u8; 4096];
    loop {
        // Readiness and try_io take nothing from the task's cooperative budget: without this a
        // direction that never runs dry would hold its worker, and the other direction with it.
        tokio::task::coop::consume_budget().await;
        let got = from
            .async_io(Interest::READABLE, || {
                match splice(from.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_BYTES) {
                    // splice stops at TCP's urgent mark and never passes it; recv, as a copying
                    // relay reads, passes over the out-of-band byte and goes on.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && at_urgent_mark(from) => {
                        recv(from, &mut past_mark).map(Got::Read)
                    }
                    r => r.map(Got::Spliced),
                }
            })
            .await?;
        let n = match got {
            Got::Spliced(0) | Got::Read(0) => {
                // SAFETY: shutdown on a socket descriptor `to` owns.
                if unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                return Ok(moved);
            }
            Got::Read(n) => {
                write_all(to, &past_mark[..n]).await?;
                touch();
                n
            }
            Got::Spliced(n) => {
                touch();
                let mut left = n;
                while left > 0 {
                    left -= to
                        .async_io(Interest::WRITABLE, || {
                            splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
                        })
                        .await?;
                    touch();
                }
                n
            }
        };
        moved += n as u64;
    }
}

/// Linux's SIOCATMARK (asm-generic/sockios.h; the libc crate defines it for BSDs only).
const SIOCATMARK: libc::c_ulong = 0x8905;

/// Whether the next byte to read from `s` is TCP's urgent mark.
fn at_urgent_mark(s: &TcpStream) -> bool {
    let mut at: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one int through the pointer it is given.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), SIOCATMARK as _, &mut at) };
    rc == 0 && at != 0
}

/// One non-blocking recv(2) into `buf`.
fn recv(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for its length; the socket is non-blocking (tokio's).
    let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(k) => bytes = &bytes[k..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `splice` call, non-blocking on both ends; `WouldBlock` when the socket has nothing to
/// give or no room to take (tokio then waits for readiness again).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both are open descriptors owned by the caller; null offsets are what splice
    // takes for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A pipe, non-blocking on both ends, closed when dropped.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A pipe left at the default size only costs more calls.
        // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as libc::c_int,
            )
        };
        Ok(Self { read, write })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// A connected pair over loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn relays_both_ways_early_bytes_first_and_half_closes() {
        let (mut client, a) = pair().await;
        let (b, mut task) = pair().await;
        let relay = tokio::spawn(async move {
            relay(a, b"early-a ", b, b"early-b ", Duration::from_secs(5)).await
        });
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let up = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&up).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        task.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..8], b"early-a ");
        assert!(got[8..] == big[..], "a → b arrives whole and in order");
        task.write_all(b"reply").await.unwrap();
        drop(task);
        assert_eq!(writer.await.unwrap(), b"early-b reply");
        let (ab, ba) = relay.await.unwrap().unwrap();
        assert_eq!((ab, ba), (8 + big.len() as u64, 13));
    }

    #[tokio::test]
    async fn urgent_data_does_not_stop_a_direction() {
        let (client, a) = pair().await;
        let (b, mut task) = pair().await;
        let relay =
            tokio::spawn(async move { relay(a, b"", b, b"", Duration::from_secs(5)).await });
        let send = |bytes: &[u8], flags| {
            // SAFETY: a valid socket and buffer.
            let n = unsafe {
                libc::send(
                    client.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    flags,
                )
            };
            assert_eq!(n, bytes.len() as isize);
        };
        send(b"before ", 0);
        send(b"!", libc::MSG_OOB);
        send(b"after", 0);
        // As a copying relay reads: the urgent byte is out of band, the rest goes through.
        let mut got = vec![0u8; b"before after".len()];
        tokio::time::timeout(Duration::from_secs(3), task.read_exact(&mut got))
            .await
            .expect("the bytes after the urgent mark arrive")
            .unwrap();
        assert_eq!(got, b"before after");
        relay.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn silence_closes_the_tunnel() {
        let (_client, a) = pair().await;
        let (b, _task) = pair().await;
        let e = relay(a, b"", b, b"", Duration::from_secs(60))
            .await
            .expect_err("nothing moved for a minute");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
