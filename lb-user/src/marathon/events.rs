//! Marathon's `/v2/events` server-sent-event stream: an incremental SSE parser (pure) and the task
//! that keeps a stream open, declares it dead when silent, and reconnects with jittered backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{
    backoff::{Backoff, BackoffState},
    client::MarathonClient,
    event_apps::apps_named,
};

/// The event types that can change which tasks are healthy backends; the same set marathon-lb
/// subscribes to. Marathon versions that ignore the filter are filtered again on our side.
pub const DEFAULT_EVENT_TYPES: &[&str] = &[
    "status_update_event",
    "health_status_changed_event",
    "api_post_event",
    "app_terminated_event",
    "deployment_success",
    "deployment_failed",
];

/// Events about our own subscription, never a reason to re-read.
const SUBSCRIPTION_EVENTS: &[&str] = &["event_stream_attached", "event_stream_detached"];

/// A line longer than this is cut (the rest dropped up to the next newline): events are only
/// triggers, and a peer that never sends a newline must not grow our memory without bound.
pub const MAX_LINE: usize = 16 << 20;

/// The path and query of the event stream for `types` (relative to a Marathon base URL).
pub fn events_path<S: AsRef<str>>(types: &[S]) -> String {
    let mut path = String::from("v2/events");
    for (i, t) in types.iter().enumerate() {
        path.push(if i == 0 { '?' } else { '&' });
        path.push_str("event_type=");
        path.push_str(t.as_ref());
    }
    path
}

/// One dispatched server-sent event. `data` is the data lines joined by `\n`; it may hold several
/// JSON objects (Marathon does that), which is why nothing here parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Event(SseEvent),
    /// A blank line with no event pending: Marathon's keep-alive (`\r\n`).
    Heartbeat,
}

/// Incremental parser for `text/event-stream`: feed it chunks as they arrive, cut anywhere.
/// Lines end in `\n`, `\r\n` or `\r` (the SSE spec allows all three); a blank line dispatches.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    line_cut: bool,
    /// The previous chunk ended in `\r`, so a leading `\n` in the next one belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `chunk` and appends every item it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseItem>) {
        let mut rest = chunk;
        if self.after_cr && rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
        self.after_cr = false;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push_bytes(&rest[..pos]);
            let ended_with_cr = rest[pos] == b'\r';
            rest = &rest[pos + 1..];
            if ended_with_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            self.end_line(out);
        }
        self.push_bytes(rest);
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        if bytes.len() > room {
            self.line_cut = true;
        }
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_line(&mut self, out: &mut Vec<SseItem>) {
        let line = std::mem::take(&mut self.line);
        self.line_cut = false;
        if line.is_empty() {
            // Unlike a browser we also dispatch an `event:` without data: any event is a trigger.
            if self.has_data || self.event.is_some() {
                out.push(SseItem::Event(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                }));
                self.has_data = false;
            } else {
                out.push(SseItem::Heartbeat);
            }
            return;
        }
        if line[0] == b':' {
            return; // a comment
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        match field {
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                if self.data.len() > MAX_LINE {
                    let mut cut = MAX_LINE;
                    while !self.data.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    self.data.truncate(cut);
                }
                self.has_data = true;
            }
            // `id` and `retry` are for browsers resuming streams; Marathon cannot resume.
            _ => {}
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventStreamConfig {
    /// Event types to subscribe to (and to accept: others are dropped).
    pub event_types: Vec<String>,
    /// A stream silent this long is dead; Marathon sends heartbeats well within the default.
    pub idle_timeout: Duration,
    pub backoff: Backoff,
}

impl Default for EventStreamConfig {
    fn default() -> Self {
        Self {
            event_types: DEFAULT_EVENT_TYPES
                .iter()
                .map(ToString::to_string)
                .collect(),
            idle_timeout: Duration::from_secs(60),
            backoff: Backoff::default(),
        }
    }
}

/// What the stream task tells the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSignal {
    /// A stream is open (headers received); events from before this may have been missed.
    Connected { url: String },
    /// A relevant event; `received` is when its bytes came off the socket. `apps` are the ids
    /// of the apps it changes, `None` when it does not say for sure (read everything).
    Event {
        name: Option<String>,
        apps: Option<Vec<String>>,
        received: Instant,
    },
    /// The stream could not be opened or died; the task retries after `retry_in`.
    Disconnected { reason: String, retry_in: Duration },
}

/// Whether an event should cause a re-read.
fn is_trigger(event: &SseEvent, types: &[String]) -> bool {
    match &event.event {
        // Old Marathons send data-only events; without a name we cannot filter, so re-read.
        None => true,
        Some(name) if SUBSCRIPTION_EVENTS.contains(&name.as_str()) => false,
        Some(name) => types.is_empty() || types.iter().any(|t| t == name),
    }
}

/// Listens to the event stream until `tx` is closed: opens it (with the client's failover), reports
/// each relevant event, and reconnects with backoff when it fails or falls silent.
pub async fn listen(
    client: Arc<MarathonClient>,
    cfg: EventStreamConfig,
    tx: mpsc::Sender<StreamSignal>,
) {
    let path = events_path(&cfg.event_types);
    let mut backoff = BackoffState::new(cfg.backoff);
    loop {
        let opened = Instant::now();
        let reason = match client.open_event_stream(&path).await {
            Err(e) => format!("opening the event stream: {e}"),
            Ok((response, url)) => {
                tracing::info!(%url, "Marathon event stream connected");
                if tx
                    .send(StreamSignal::Connected { url: url.clone() })
                    .await
                    .is_err()
                {
                    return;
                }
                match read_stream(response, &cfg, &tx).await {
                    Some(reason) => format!("event stream from {url}: {reason}"),
                    None => return,
                }
            }
        };
        // A stream that stayed up a while was a success: start the next backoff from scratch.
        if opened.elapsed() >= cfg.backoff.max {
            backoff.reset();
        }
        let retry_in = backoff.next_delay(&mut rand::rng());
        tracing::warn!(%reason, ?retry_in, "Marathon event stream down, reconnecting");
        if tx
            .send(StreamSignal::Disconnected { reason, retry_in })
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(retry_in) => {}
            () = tx.closed() => return,
        }
    }
}

/// Reads one open stream; returns why it ended, or `None` when the receiver is gone.
async fn read_stream(
    response: reqwest::Response,
    cfg: &EventStreamConfig,
    tx: &mpsc::Sender<StreamSignal>,
) -> Option<String> {
    let mut body = response.bytes_stream();
    let mut parser = SseParser::new();
    let mut items = Vec::new();
    loop {
        let chunk = tokio::select! {
            next = tokio::time::timeout(cfg.idle_timeout, body.next()) => next,
            () = tx.closed() => return None,
        };
        let chunk = match chunk {
            Err(_) => {
                return Some(format!(
                    "silent for {:?} (no heartbeat), assuming it is dead",
                    cfg.idle_timeout
                ));
            }
            Ok(None) => return Some("closed by Marathon".to_string()),
            Ok(Some(Err(e))) => return Some(format!("read failed: {}", e.without_url())),
            Ok(Some(Ok(chunk))) => chunk,
        };
        // Taken before parsing so that the consumer's latency figure starts at the socket.
        let received = Instant::now();
        parser.feed(&chunk, &mut items);
        for item in items.drain(..) {
            if let SseItem::Event(event) = item
                && is_trigger(&event, &cfg.event_types)
                && tx
                    .send(StreamSignal::Event {
                        apps: apps_named(&event),
                        name: event.event,
                        received,
                    })
                    .await
                    .is_err()
            {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseItem> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out);
        }
        out
    }

    fn ev(name: Option<&str>, data: &str) -> SseItem {
        SseItem::Event(SseEvent {
            event: name.map(str::to_string),
            data: data.to_string(),
        })
    }

    const SAMPLE: &[u8] =
        b"event: event_stream_attached\r\ndata: {\"eventType\":\"event_stream_attached\"}\r\n\r\n\
\r\n\
event: status_update_event\ndata: {\"taskStatus\":\"TASK_RUNNING\",\"appId\":\"/foo\"}\n\n";

    #[test]
    fn parses_marathon_events_and_heartbeats() {
        let items = parse_chunks(&[SAMPLE]);
        assert_eq!(
            items,
            vec![
                ev(
                    Some("event_stream_attached"),
                    "{\"eventType\":\"event_stream_attached\"}"
                ),
                SseItem::Heartbeat,
                ev(
                    Some("status_update_event"),
                    "{\"taskStatus\":\"TASK_RUNNING\",\"appId\":\"/foo\"}"
                ),
            ]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_items() {
        let whole = parse_chunks(&[SAMPLE]);
        for cut in 0..=SAMPLE.len() {
            let (a, b) = SAMPLE.split_at(cut);
            assert_eq!(parse_chunks(&[a, b]), whole, "split at byte {cut}");
        }
        let bytewise: Vec<&[u8]> = SAMPLE.chunks(1).collect();
        assert_eq!(parse_chunks(&bytewise), whole, "one byte per chunk");
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        // "\r" then "\n" in the next read must not count as two line ends (which would dispatch early
        // or invent a heartbeat).
        let items = parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(items, vec![ev(None, "a\nb")]);
    }

    #[test]
    fn bare_cr_line_endings() {
        assert_eq!(
            parse_chunks(&[b"event: x\rdata: 1\r\r\r"]),
            vec![ev(Some("x"), "1"), SseItem::Heartbeat]
        );
    }

    #[test]
    fn heartbeats_alone() {
        assert_eq!(
            parse_chunks(&[b"\r\n\r\n", b"\n"]),
            vec![SseItem::Heartbeat; 3]
        );
    }

    #[test]
    fn several_data_lines_and_several_objects_per_line() {
        let items = parse_chunks(&[
            b"event: deployment_success\ndata: {\"a\":1}{\"b\":2}\ndata: {\"c\":3}\n\n",
        ]);
        assert_eq!(
            items,
            vec![ev(
                Some("deployment_success"),
                "{\"a\":1}{\"b\":2}\n{\"c\":3}"
            )]
        );
    }

    #[test]
    fn data_without_event_line_and_event_without_data() {
        assert_eq!(parse_chunks(&[b"data: {}\n\n"]), vec![ev(None, "{}")]);
        assert_eq!(
            parse_chunks(&[b"event: app_terminated_event\n\n"]),
            vec![ev(Some("app_terminated_event"), "")]
        );
    }

    #[test]
    fn fields_without_space_comments_and_unknown_fields() {
        let items =
            parse_chunks(&[b": keep-alive\nid: 7\nretry: 10\nevent:x\ndata:no-space\ndata\n\n"]);
        assert_eq!(items, vec![ev(Some("x"), "no-space\n")]);
    }

    #[test]
    fn nothing_is_dispatched_before_the_blank_line() {
        assert_eq!(parse_chunks(&[b"event: x\ndata: 1\n"]), vec![]);
    }

    #[test]
    fn overlong_lines_are_cut_not_buffered() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser.feed(b"data: ", &mut out);
        let block = vec![b'x'; 1 << 20];
        for _ in 0..(MAX_LINE >> 20) + 2 {
            parser.feed(&block, &mut out);
        }
        assert!(
            parser.line.len() <= MAX_LINE,
            "line buffer bounded: {}",
            parser.line.len()
        );
        parser.feed(b"\n\n", &mut out);
        assert_eq!(out.len(), 1, "the cut event is still dispatched");
        assert!(matches!(&out[0], SseItem::Event(e) if e.data.len() <= MAX_LINE));
    }

    #[test]
    fn trigger_filter() {
        let types: Vec<String> = DEFAULT_EVENT_TYPES
            .iter()
            .map(ToString::to_string)
            .collect();
        let e = |name: Option<&str>| SseEvent {
            event: name.map(str::to_string),
            data: String::new(),
        };
        assert!(is_trigger(&e(Some("status_update_event")), &types));
        assert!(is_trigger(&e(None), &types), "unnamed events trigger");
        assert!(
            !is_trigger(&e(Some("event_stream_attached")), &types),
            "our own attachment does not"
        );
        assert!(
            !is_trigger(&e(Some("framework_message_event")), &types),
            "unsubscribed types do not"
        );
        assert!(
            is_trigger(&e(Some("framework_message_event")), &[]),
            "an empty list accepts all"
        );
    }

    #[test]
    fn events_path_lists_every_type() {
        assert_eq!(
            events_path(&["a", "b"]),
            "v2/events?event_type=a&event_type=b"
        );
        assert_eq!(events_path::<&str>(&[]), "v2/events");
    }
}
