//! Sans-IO HTTP/1.x request parser.
//!
//! The event loop owns the socket and feeds bytes in; this module turns them into [`Request`]s.
//! Keeping it free of I/O makes every framing rule unit-testable, and parsing eagerly on each
//! [`RequestParser::push`] keeps per-connection memory bounded by the [`Limits`] whatever the
//! peer sends. After any [`HttpError`] the framing of the stream is lost: the caller should
//! send the error response with `Connection: close` and drop the connection.
//!
//! Usage: on every read, `push` the bytes, then call `poll` until it returns
//! [`Progress::NeedMore`] (or stop early while a response is still being produced; unparsed
//! pipelined bytes stay buffered, bounded, until the next `poll`).
//!
//! Streamed bodies: for the requests a [`StreamCheck`] picks (file uploads), the body is not
//! collected. `poll` gives the head at once ([`Progress::Head`]), then the decoded body in
//! pieces as it arrives ([`Progress::Body`]), then [`Progress::BodyEnd`]; `max_body_bytes` does
//! not apply. What the parser holds is then what was pushed and not yet polled: the caller
//! bounds it by not reading the socket while [`RequestParser::streamed_bytes`] is high.

use memchr::memchr;
use std::fmt;
use std::rc::Rc;

/// Longest chunk-size line (size plus extensions) accepted; real clients send a few bytes.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// Extra room for chunk framing when a pipelined request waits raw behind a completed one.
const PIPELINE_SLACK: usize = 64 * 1024;
/// Heads up to this size are re-parsed on every push even without a new line, so garbage such
/// as a TLS ClientHello is rejected at once instead of after a timeout; it is cheap at this size.
const EAGER_PARSE_BYTES: usize = 64;
/// Longest offending value quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 64;

/// Per-request size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers plus the blank line; chunked trailers get the same budget.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Decoded body size (after chunk framing is removed).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// A complete request with its decoded body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub method: String,
    /// Raw request-target as sent.
    pub target: String,
    /// Part of the target before `?`, not percent-decoded; for absolute-form targets
    /// (`http://host/p`) only the path (`/p`) is kept.
    pub path: String,
    /// Raw part after `?` (empty if none).
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// Lowercased names, trimmed UTF-8 values, in arrival order (duplicates kept).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[cfg(test)]
impl Request {
    /// A request as the parser gives it (`path` and `query` split from `target`, HTTP/1.1),
    /// for the tests of what reads requests.
    pub fn for_test(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.into(),
            target: target.into(),
            path: path.into(),
            query: query.into(),
            version_minor: 1,
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }
}

impl Request {
    /// First value of a header; `name_lowercase` must be lowercase.
    pub fn header(&self, name_lowercase: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name == name_lowercase)
            .map(|(_, value)| value.as_str())
    }

    /// The comma-separated elements of every `name` header, trimmed, empty ones skipped
    /// (RFC 9110 §5.6.1: a list may be split over several header lines). `name` is lowercase.
    pub fn list<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, value)| value.split(','))
            .map(str::trim)
            .filter(|element| !element.is_empty())
    }

    /// Whether any element of the `name` list equals `token` (ASCII case-insensitively).
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.list(name)
            .any(|element| element.eq_ignore_ascii_case(token))
    }

    /// HTTP/1.1 is persistent unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`, and never when it carried `Transfer-Encoding` (RFC 9112 §6.1
    /// says such framing is suspect, so the connection must close afterwards).
    pub fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        if self.version_minor >= 1 {
            true
        } else {
            self.has_token("connection", "keep-alive") && self.header("transfer-encoding").is_none()
        }
    }

    /// `GET` with `Upgrade: websocket` and an `upgrade` token in `Connection`.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.method == "GET"
            && self.has_token("upgrade", "websocket")
            && self.has_token("connection", "upgrade")
    }

    /// `Expect: 100-continue` on HTTP/1.1 (HTTP/1.0 clients do not wait for it).
    pub fn expects_continue(&self) -> bool {
        self.version_minor >= 1
            && self
                .headers
                .iter()
                .any(|(n, v)| n == "expect" && v.eq_ignore_ascii_case("100-continue"))
    }
}

/// A request the server refuses; `status` is the HTTP status to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    /// Lowercase, human readable, names the offending value or the limit.
    pub message: String,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        HttpError::new(400, message)
    }

    fn body_too_large(limits: &Limits) -> Self {
        HttpError::new(
            413,
            format!(
                "request body is larger than the {}-byte limit",
                limits.max_body_bytes
            ),
        )
    }

    fn head_too_large(limits: &Limits) -> Self {
        HttpError::new(
            431,
            format!("request headers exceed {} bytes", limits.max_header_bytes),
        )
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for HttpError {}

/// What [`RequestParser::poll`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Nothing more can be done until more bytes are pushed.
    NeedMore,
    /// The head asked for `Expect: 100-continue` and the body is pending: send
    /// `HTTP/1.1 100 Continue\r\n\r\n` now. Returned at most once per request.
    SendContinue,
    /// A complete request. Bytes after it stay buffered for the next one (pipelining).
    Done(Request),
    /// The head of a request whose body is streamed (its `body` is empty): pieces of the body
    /// follow as [`Progress::Body`], then [`Progress::BodyEnd`].
    Head(Request),
    /// The next decoded piece of a streamed body.
    Body(Vec<u8>),
    /// The streamed body is complete; bytes after it belong to the next request.
    BodyEnd,
}

/// How the rest of the current body is framed.
#[derive(Debug)]
enum Framing {
    Length {
        remaining: usize,
    },
    Chunked {
        phase: ChunkPhase,
        trailer_bytes: usize,
    },
}

#[derive(Debug, Clone, Copy)]
enum ChunkPhase {
    /// Reading `hex-size [; ext] CRLF`.
    Size,
    Data {
        remaining: usize,
    },
    /// The CRLF that closes a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, skipped, up to an empty line.
    Trailers,
}

#[derive(Debug)]
struct BodyState {
    request: Request,
    framing: Framing,
    continue_pending: bool,
    /// The body goes to the caller in pieces instead of into `request.body`.
    streamed: bool,
}

#[derive(Debug)]
enum State {
    /// Waiting for a complete head; `scanned` bytes of the buffer were already searched for a
    /// line feed, so each byte is searched once.
    Head {
        scanned: usize,
    },
    Body(Box<BodyState>),
    /// The last head was for a relayed request (see [`RequestParser::with_relay_check`]):
    /// nothing after it is parsed; the bytes wait for [`RequestParser::take_raw`].
    Raw,
}

/// A decision taken on a request from its head alone, before any of its body is read (the
/// API key check). An error is answered like a parse error, and the connection closes: the
/// body that was not read leaves the stream out of sync.
#[derive(Clone)]
pub struct HeadCheck(Rc<HeadCheckFn>);

type HeadCheckFn = dyn Fn(&Request) -> Result<(), HttpError>;

impl HeadCheck {
    pub fn new(check: impl Fn(&Request) -> Result<(), HttpError> + 'static) -> Self {
        HeadCheck(Rc::new(check))
    }

    /// Runs the check on `request` (for heads parsed outside a connection's parser: the later
    /// requests of a port's connection).
    pub fn check(&self, request: &Request) -> Result<(), HttpError> {
        (self.0)(request)
    }
}

/// Which requests have their body streamed (decided on the head, after the [`HeadCheck`]).
#[derive(Clone)]
pub struct StreamCheck(Rc<dyn Fn(&Request) -> bool>);

impl StreamCheck {
    pub fn new(check: impl Fn(&Request) -> bool + 'static) -> Self {
        StreamCheck(Rc::new(check))
    }
}

impl fmt::Debug for StreamCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamCheck")
    }
}

impl fmt::Debug for HeadCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeadCheck")
    }
}

/// Decides from a head whether the request is relayed as bytes (a port of a sandbox, issue
/// 20) instead of parsed: its body, and whatever follows, is not framed here.
#[derive(Clone)]
pub struct RelayCheck(Rc<dyn Fn(&Request) -> bool>);

impl RelayCheck {
    pub fn new(check: impl Fn(&Request) -> bool + 'static) -> Self {
        RelayCheck(Rc::new(check))
    }
}

impl fmt::Debug for RelayCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayCheck")
    }
}

/// Incremental request parser for one connection.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    /// Runs on every complete head before its framing is even looked at.
    head_check: Option<HeadCheck>,
    relay_check: Option<RelayCheck>,
    /// Received bytes not yet consumed: a partial head, partial chunk framing, or pipelined
    /// data behind `ready`.
    buf: Vec<u8>,
    state: State,
    /// A completed request not yet returned by `poll`. Nothing after it is parsed until it is
    /// taken, so at most one request is held.
    ready: Option<Request>,
    /// Sticky: once framing is lost every later call reports the same error.
    error: Option<HttpError>,
    /// Picks the requests whose body is streamed.
    stream_check: Option<StreamCheck>,
    /// The head of a streamed request, not yet polled.
    streamed_head: Option<Request>,
    /// Decoded bytes of a streamed body, not yet polled.
    streamed: Vec<u8>,
    /// The streamed body ended and `BodyEnd` was not yet polled: nothing after it is parsed.
    streamed_end: bool,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        RequestParser {
            limits,
            head_check: None,
            relay_check: None,
            buf: Vec::new(),
            state: State::Head { scanned: 0 },
            ready: None,
            error: None,
            stream_check: None,
            streamed_head: None,
            streamed: Vec::new(),
            streamed_end: false,
        }
    }

    /// Streams the body of the requests `check` picks (see the module documentation).
    pub fn with_streamed_bodies(mut self, check: StreamCheck) -> Self {
        self.stream_check = Some(check);
        self
    }

    /// Bytes of a streamed body held (decoded and not polled, or received and not decoded).
    pub fn streamed_bytes(&self) -> usize {
        let streaming = matches!(&self.state, State::Body(body) if body.streamed);
        self.streamed.len() + if streaming { self.buf.len() } else { 0 }
    }

    /// Whether a streamed body is being received (its head was polled or is waiting).
    pub fn is_streaming(&self) -> bool {
        self.streamed_head.is_some()
            || !self.streamed.is_empty()
            || self.streamed_end
            || matches!(&self.state, State::Body(body) if body.streamed)
    }

    /// Runs `check` on the head of every request as soon as it is complete: a refused request
    /// fails before its body is read (and before `100 Continue` is offered).
    pub fn with_head_check(mut self, check: HeadCheck) -> Self {
        self.head_check = Some(check);
        self
    }

    /// Requests for which `check` is true are returned (`Done`) as soon as their head is
    /// complete and its `head_check` passed, without a body; the parser then stops parsing:
    /// the bytes after the head are the caller's ([`RequestParser::take_raw`]).
    pub fn with_relay_check(mut self, check: RelayCheck) -> Self {
        self.relay_check = Some(check);
        self
    }

    /// A relayed request's head was returned: what follows is raw bytes.
    pub fn is_raw(&self) -> bool {
        matches!(self.state, State::Raw)
    }

    /// The bytes received after a relayed request's head (empties the buffer).
    pub fn take_raw(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Appends bytes read from the socket and parses as far as possible.
    ///
    /// Errors for the request being parsed are returned at once (an oversized head, a declared
    /// `Content-Length` over the limit, a bad chunk, ...). While a completed request is waiting
    /// to be polled, an error caused by the bytes behind it (only: more pipelined data than
    /// `max_header_bytes + max_body_bytes + 64 KiB`) is deferred so `poll` returns the waiting
    /// request first and the error after it. Memory held stays under that bound.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), HttpError> {
        if let Some(error) = &self.error {
            return if self.ready.is_some() {
                Ok(())
            } else {
                Err(error.clone())
            };
        }
        if self.ready.is_some() && self.buf.len().saturating_add(bytes.len()) > self.raw_cap() {
            self.fail(HttpError::new(
                413,
                format!(
                    "pipelined data exceeds the {}-byte buffer limit",
                    self.raw_cap()
                ),
            ));
            return Ok(());
        }
        self.buf.extend_from_slice(bytes);
        self.advance()?;
        if self.buf.len() > self.raw_cap() {
            // Only reachable when one huge push completed a request and left more behind it.
            let error = self.fail(HttpError::new(
                413,
                format!(
                    "pipelined data exceeds the {}-byte buffer limit",
                    self.raw_cap()
                ),
            ));
            if self.ready.is_none() {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Returns the next step: a completed request, a one-time 100-continue signal, or
    /// `NeedMore`. After `Done` the next call starts on any pipelined bytes already buffered.
    pub fn poll(&mut self) -> Result<Progress, HttpError> {
        if let Some(progress) = self.take_streamed() {
            return Ok(progress);
        }
        if let Some(request) = self.ready.take() {
            return Ok(Progress::Done(request));
        }
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        self.advance()?;
        if let Some(progress) = self.take_streamed() {
            return Ok(progress);
        }
        if let Some(request) = self.ready.take() {
            return Ok(Progress::Done(request));
        }
        if let State::Body(body) = &mut self.state {
            if body.continue_pending {
                body.continue_pending = false;
                return Ok(Progress::SendContinue);
            }
        }
        Ok(Progress::NeedMore)
    }

    /// What a streamed request has for the caller, in order: its head, body bytes, its end.
    fn take_streamed(&mut self) -> Option<Progress> {
        if let Some(head) = self.streamed_head.take() {
            return Some(Progress::Head(head));
        }
        if !self.streamed.is_empty() {
            return Some(Progress::Body(std::mem::take(&mut self.streamed)));
        }
        std::mem::take(&mut self.streamed_end).then_some(Progress::BodyEnd)
    }

    /// Bytes held: unparsed input plus the body decoded so far (diagnostics only).
    pub fn buffered_len(&self) -> usize {
        let body = match &self.state {
            State::Body(body) => body.request.body.len(),
            State::Head { .. } | State::Raw => 0,
        };
        self.buf.len()
            + body
            + self.ready.as_ref().map_or(0, |r| r.body.len())
            + self.streamed.len()
    }

    /// True between requests: nothing partial is held, so a quiet connection is idle rather
    /// than a slow client in the middle of a request.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head { .. })
            && self.buf.is_empty()
            && self.ready.is_none()
            && self.error.is_none()
            && !self.is_streaming()
    }

    fn raw_cap(&self) -> usize {
        self.limits
            .max_header_bytes
            .saturating_add(self.limits.max_body_bytes)
            .saturating_add(PIPELINE_SLACK)
    }

    /// Records a sticky error and frees the buffers (the stream is unusable now).
    fn fail(&mut self, error: HttpError) -> HttpError {
        self.error = Some(error.clone());
        self.buf = Vec::new();
        // A streamed body cut by an error is no body: its pieces and head are dropped.
        self.streamed_head = None;
        self.streamed = Vec::new();
        self.streamed_end = false;
        self.state = State::Head { scanned: 0 };
        error
    }

    fn advance(&mut self) -> Result<(), HttpError> {
        match self.advance_inner() {
            Ok(()) => Ok(()),
            Err(error) => Err(self.fail(error)),
        }
    }

    fn advance_inner(&mut self) -> Result<(), HttpError> {
        if self.ready.is_some() || self.error.is_some() || self.streamed_end || self.is_raw() {
            return Ok(());
        }
        if let State::Head { scanned } = self.state {
            if !self.advance_head(scanned)? {
                return Ok(());
            }
        }
        let Self {
            buf,
            state,
            limits,
            ready,
            streamed,
            streamed_end,
            ..
        } = self;
        if let State::Body(body) = state {
            let limits = if body.streamed {
                streamed_limits(limits)
            } else {
                *limits
            };
            let (consumed, done) = body.consume(buf, &limits)?;
            // `consume` reports a count of bytes taken from `buf`, so the range is in bounds.
            buf.drain(..consumed);
            if body.streamed {
                streamed.append(&mut body.request.body);
            }
            if done {
                if let State::Body(body) = std::mem::replace(state, State::Head { scanned: 0 }) {
                    if body.streamed {
                        *streamed_end = true;
                    } else {
                        *ready = Some(body.request);
                    }
                }
            }
        }
        Ok(())
    }

    /// Tries to complete the head. Returns whether a body now needs reading.
    fn advance_head(&mut self, scanned: usize) -> Result<bool, HttpError> {
        // RFC 9112 §2.2: ignore empty lines before a request line (some clients send an extra
        // CRLF after a body). They are dropped, so they cost no memory.
        let blank = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let scanned = if blank > 0 {
            self.buf.drain(..blank);
            0
        } else {
            scanned.min(self.buf.len())
        };
        if self.buf.is_empty() {
            self.state = State::Head { scanned: 0 };
            return Ok(false);
        }
        // Re-parse only when a line was completed (bounded by max_headers lines) or the head is
        // tiny, so byte-at-a-time input costs O(lines * head) rather than O(head^2).
        let new_line = memchr(b'\n', self.buf.get(scanned..).unwrap_or_default()).is_some();
        self.state = State::Head {
            scanned: self.buf.len(),
        };
        if !new_line && self.buf.len() > EAGER_PARSE_BYTES {
            if self.buf.len() > self.limits.max_header_bytes {
                return Err(HttpError::head_too_large(&self.limits));
            }
            return Ok(false);
        }
        let (head_len, request) = match parse_head(&self.buf, &self.limits)? {
            None => {
                if self.buf.len() > self.limits.max_header_bytes {
                    return Err(HttpError::head_too_large(&self.limits));
                }
                return Ok(false);
            }
            Some(parsed) => parsed,
        };
        if let Some(check) = &self.head_check {
            (check.0)(&request)?;
        }
        if self
            .relay_check
            .as_ref()
            .is_some_and(|relay| (relay.0)(&request))
        {
            // httparse's Complete(len) never exceeds the input length.
            self.buf.drain(..head_len.min(self.buf.len()));
            self.ready = Some(request);
            self.state = State::Raw;
            return Ok(false);
        }
        let streamed = self
            .stream_check
            .as_ref()
            .is_some_and(|check| (check.0)(&request));
        let limits = if streamed {
            streamed_limits(&self.limits)
        } else {
            self.limits
        };
        let framing = body_framing(&request, &limits)?;
        // httparse's Complete(len) never exceeds the input length.
        self.buf.drain(..head_len.min(self.buf.len()));
        match framing {
            None => {
                self.ready = Some(request);
                self.state = State::Head { scanned: 0 };
                Ok(false)
            }
            Some(framing) => {
                let continue_pending = request.expects_continue();
                if streamed {
                    self.streamed_head = Some(request.clone());
                }
                self.state = State::Body(Box::new(BodyState {
                    request,
                    framing,
                    continue_pending,
                    streamed,
                }));
                Ok(true)
            }
        }
    }
}

/// A streamed body is not held: no size limit applies to it here.
fn streamed_limits(limits: &Limits) -> Limits {
    Limits {
        max_body_bytes: usize::MAX,
        ..*limits
    }
}

impl BodyState {
    /// Moves body bytes from `input` into the request. Returns (bytes consumed, body complete).
    fn consume(&mut self, input: &[u8], limits: &Limits) -> Result<(usize, bool), HttpError> {
        let body = &mut self.request.body;
        let mut rest = input;
        let done = match &mut self.framing {
            Framing::Length { remaining } => {
                let (data, after) = rest.split_at((*remaining).min(rest.len()));
                body.extend_from_slice(data);
                *remaining -= data.len();
                rest = after;
                *remaining == 0
            }
            Framing::Chunked {
                phase,
                trailer_bytes,
            } => decode_chunked(&mut rest, phase, trailer_bytes, body, limits)?,
        };
        Ok((input.len() - rest.len(), done))
    }
}

/// Runs the chunked decoder over `input`, advancing it past what was consumed. Returns whether
/// the final chunk and trailers are complete. Line endings must be CRLF: accepting bare LF here
/// while a proxy in front does not is a request-smuggling vector.
fn decode_chunked(
    input: &mut &[u8],
    phase: &mut ChunkPhase,
    trailer_bytes: &mut usize,
    body: &mut Vec<u8>,
    limits: &Limits,
) -> Result<bool, HttpError> {
    loop {
        match *phase {
            ChunkPhase::Size => {
                let Some(line) = take_line(input, MAX_CHUNK_LINE).map_err(|()| {
                    HttpError::bad_request(format!(
                        "chunk size line exceeds {MAX_CHUNK_LINE} bytes"
                    ))
                })?
                else {
                    return Ok(false);
                };
                let size = parse_chunk_size(line)?;
                let room = limits.max_body_bytes.saturating_sub(body.len());
                if size > room as u64 {
                    return Err(HttpError::body_too_large(limits));
                }
                *phase = match usize::try_from(size) {
                    Ok(0) => ChunkPhase::Trailers,
                    Ok(remaining) => {
                        // Grow gradually: a declared size is not proof the data will come.
                        body.reserve(remaining.min(64 * 1024));
                        ChunkPhase::Data { remaining }
                    }
                    Err(_) => return Err(HttpError::body_too_large(limits)),
                };
            }
            ChunkPhase::Data { remaining } => {
                if input.is_empty() {
                    return Ok(false);
                }
                let (data, after) = input.split_at(remaining.min(input.len()));
                body.extend_from_slice(data);
                *input = after;
                let remaining = remaining - data.len();
                *phase = if remaining == 0 {
                    ChunkPhase::DataEnd
                } else {
                    ChunkPhase::Data { remaining }
                };
            }
            ChunkPhase::DataEnd => match *input {
                [b'\r', b'\n', ref after @ ..] => {
                    *input = after;
                    *phase = ChunkPhase::Size;
                }
                [] | [b'\r'] => return Ok(false),
                _ => return Err(HttpError::bad_request("chunk data is not followed by crlf")),
            },
            ChunkPhase::Trailers => {
                let budget = limits.max_header_bytes.saturating_sub(*trailer_bytes);
                let too_large = || {
                    HttpError::new(
                        431,
                        format!("request trailers exceed {} bytes", limits.max_header_bytes),
                    )
                };
                let Some(line) = take_line(input, budget).map_err(|()| too_large())? else {
                    return Ok(false);
                };
                *trailer_bytes += line.len();
                if !line.ends_with(b"\r\n") {
                    return Err(HttpError::bad_request(
                        "chunked trailer line is not terminated by crlf",
                    ));
                }
                if line == b"\r\n" {
                    return Ok(true);
                }
            }
        }
    }
}

/// Splits one `\n`-terminated line (terminator included) off the front of `input`.
/// `Ok(None)` if incomplete; `Err` if it is or would be longer than `max` bytes.
fn take_line<'a>(input: &mut &'a [u8], max: usize) -> Result<Option<&'a [u8]>, ()> {
    match memchr(b'\n', input) {
        Some(end) => {
            if end >= max {
                return Err(());
            }
            // `end < input.len()`, so `end + 1 <= input.len()` and split_at cannot panic.
            let (line, after) = input.split_at(end + 1);
            *input = after;
            Ok(Some(line))
        }
        None if input.len() >= max => Err(()),
        None => Ok(None),
    }
}

/// Parses `1*HEXDIG [BWS ; ext] CRLF`. Sizes that overflow saturate and are then rejected by
/// the body limit, so their exact value never matters.
pub(crate) fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let invalid = || HttpError::bad_request(format!("invalid chunk size line {}", quote(line)));
    let content = line.strip_suffix(b"\r\n").ok_or_else(|| {
        HttpError::bad_request(format!(
            "chunk size line {} is not terminated by crlf",
            quote(line)
        ))
    })?;
    let digits = content.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(invalid());
    }
    let (hex, after) = content.split_at(digits);
    let size = hex.iter().fold(0u64, |acc, &b| {
        // Cannot fail: `take_while` above only admitted hex digits.
        let digit = char::from(b).to_digit(16).map_or(0, u64::from);
        acc.saturating_mul(16).saturating_add(digit)
    });
    let after = after.trim_ascii_start();
    if !(after.is_empty() || after.starts_with(b";")) || after.contains(&b'\r') {
        return Err(invalid());
    }
    Ok(size)
}

/// Parses the head if complete: `Ok(None)` means more bytes are needed.
fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(usize, Request)>, HttpError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) => len,
        Err(error) => return Err(map_parse_error(error, buf, limits)),
    };
    if head_len > limits.max_header_bytes {
        return Err(HttpError::head_too_large(limits));
    }
    let malformed = || HttpError::bad_request("malformed request line");
    let method = parsed.method.ok_or_else(malformed)?.to_string();
    let target = parsed.path.ok_or_else(malformed)?.to_string();
    let version_minor = parsed.version.ok_or_else(malformed)?;
    let mut headers_out = Vec::with_capacity(parsed.headers.len());
    for header in parsed.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| {
            HttpError::bad_request(format!(
                "header {} has a value that is not valid utf-8",
                quote(header.name.as_bytes())
            ))
        })?;
        headers_out.push((
            header.name.to_ascii_lowercase(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    let (path, query) = split_target(&target);
    Ok(Some((
        head_len,
        Request {
            method,
            path,
            query,
            target,
            version_minor,
            headers: headers_out,
            body: Vec::new(),
        },
    )))
}

fn map_parse_error(error: httparse::Error, buf: &[u8], limits: &Limits) -> HttpError {
    let first_line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
    let malformed_line =
        || HttpError::bad_request(format!("malformed request line {}", quote(first_line)));
    match error {
        httparse::Error::TooManyHeaders => HttpError::new(
            431,
            format!("request has more than {} headers", limits.max_headers),
        ),
        httparse::Error::Version => {
            // Tell a well-formed request line with a version we do not speak (HTTP/2 preface,
            // HTTP/1.2) apart from garbage.
            let parts: Vec<&[u8]> = first_line.split(|&b| b == b' ').collect();
            match parts.as_slice() {
                [_, _, version] if version.starts_with(b"HTTP/") => {
                    HttpError::new(505, format!("unsupported http version {}", quote(version)))
                }
                _ => malformed_line(),
            }
        }
        httparse::Error::Token | httparse::Error::Status => malformed_line(),
        httparse::Error::HeaderName => HttpError::bad_request("invalid header name"),
        httparse::Error::HeaderValue => HttpError::bad_request("invalid header value"),
        httparse::Error::NewLine => HttpError::bad_request("invalid line ending in request head"),
    }
}

/// Splits a request-target into (path, query); absolute-form keeps only its path.
fn split_target(target: &str) -> (String, String) {
    let origin = ["http://", "https://"]
        .iter()
        .find(|scheme| {
            target
                .get(..scheme.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme))
        })
        .map(|scheme| {
            let after = target.get(scheme.len()..).unwrap_or_default();
            after
                .find(['/', '?'])
                .and_then(|start| after.get(start..))
                .unwrap_or_default()
        })
        .unwrap_or(target);
    let (path, query) = origin.split_once('?').unwrap_or((origin, ""));
    let path = if path.is_empty() { "/" } else { path };
    (path.to_string(), query.to_string())
}

/// How a request's body is framed, for a relay that passes bodies on undecoded (the ports of
/// issue 20): the same rules as the parser's, ambiguous framing refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    None,
    Length(u64),
    Chunked,
}

/// The framing of `request`'s body under `limits` (a `Content-Length` over the body limit is
/// refused here already).
pub fn body_length(request: &Request, limits: &Limits) -> Result<BodyLength, HttpError> {
    Ok(match body_framing(request, limits)? {
        None => BodyLength::None,
        Some(Framing::Length { remaining }) => BodyLength::Length(remaining as u64),
        Some(Framing::Chunked { .. }) => BodyLength::Chunked,
    })
}

/// Decides how the body is framed (`None`: no body), rejecting ambiguous framing, which is
/// what request smuggling exploits.
fn body_framing(request: &Request, limits: &Limits) -> Result<Option<Framing>, HttpError> {
    let values = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let has_length = values("content-length").next().is_some();
    let encodings: Vec<&str> = values("transfer-encoding").collect();
    if !encodings.is_empty() {
        if has_length {
            return Err(HttpError::bad_request(
                "request has both content-length and transfer-encoding",
            ));
        }
        let joined = encodings.join(", ");
        let codings: Vec<&str> = joined.split(',').map(str::trim).collect();
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case("chunked") => Ok(Some(Framing::Chunked {
                phase: ChunkPhase::Size,
                trailer_bytes: 0,
            })),
            _ => Err(HttpError::new(
                501,
                format!("unsupported transfer-encoding {}", quote(joined.as_bytes())),
            )),
        };
    }
    if has_length {
        let mut length: Option<u64> = None;
        for value in values("content-length") {
            // `Content-Length: 5, 5` is a list some proxies produce by merging duplicates.
            for element in value.split(',') {
                let parsed = parse_decimal(element.trim()).ok_or_else(|| {
                    HttpError::bad_request(format!(
                        "invalid content-length {}",
                        quote(value.as_bytes())
                    ))
                })?;
                match length {
                    Some(previous) if previous != parsed => {
                        return Err(HttpError::bad_request(format!(
                            "conflicting content-length values {previous} and {parsed}"
                        )))
                    }
                    _ => length = Some(parsed),
                }
            }
        }
        let length = length.unwrap_or(0);
        if length > limits.max_body_bytes as u64 {
            return Err(HttpError::body_too_large(limits));
        }
        return match usize::try_from(length) {
            Ok(0) => Ok(None),
            Ok(remaining) => Ok(Some(Framing::Length { remaining })),
            Err(_) => Err(HttpError::body_too_large(limits)),
        };
    }
    if matches!(request.method.as_str(), "POST" | "PUT" | "PATCH") {
        return Err(HttpError::new(
            411,
            format!(
                "{} request needs content-length or chunked transfer-encoding",
                quote(request.method.as_bytes())
            ),
        ));
    }
    Ok(None)
}

/// `1*DIGIT` as u64; `None` for empty, non-digits or overflow.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.bytes().try_fold(0u64, |acc, b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Quotes (and escapes) an offending value for an error message, truncated so a hostile
/// client cannot make error responses or logs large.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let mut shown: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    if chars.next().is_some() {
        shown.push_str("...");
    }
    format!("{shown:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> RequestParser {
        RequestParser::new(Limits::default())
    }

    /// Pushes all bytes at once and returns every progress until NeedMore or an error.
    fn run(parser: &mut RequestParser, bytes: &[u8]) -> Result<Vec<Progress>, HttpError> {
        parser.push(bytes)?;
        drain(parser)
    }

    fn drain(parser: &mut RequestParser) -> Result<Vec<Progress>, HttpError> {
        let mut out = Vec::new();
        loop {
            match parser.poll()? {
                Progress::NeedMore => return Ok(out),
                other => out.push(other),
            }
        }
    }

    /// Pushes `bytes` in pieces of `step` bytes, collecting completed requests.
    fn run_split(bytes: &[u8], step: usize) -> Result<Vec<Request>, HttpError> {
        let mut parser = parser();
        let mut done = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            parser.push(piece)?;
            for progress in drain(&mut parser)? {
                if let Progress::Done(request) = progress {
                    done.push(request);
                }
            }
        }
        Ok(done)
    }

    fn one(bytes: &[u8]) -> Request {
        let mut parser = parser();
        match run(&mut parser, bytes).unwrap().as_slice() {
            [Progress::Done(request)] => request.clone(),
            other => panic!("expected one request, got {other:?}"),
        }
    }

    fn error(bytes: &[u8]) -> HttpError {
        error_with(Limits::default(), bytes)
    }

    fn error_with(limits: Limits, bytes: &[u8]) -> HttpError {
        let mut parser = RequestParser::new(limits);
        match run(&mut parser, bytes) {
            Err(error) => {
                // Sticky: later calls report the same error.
                assert_eq!(parser.poll(), Err(error.clone()));
                assert_eq!(parser.push(b"GET / HTTP/1.1\r\n\r\n"), Err(error.clone()));
                error
            }
            Ok(progress) => panic!("expected an error, got {progress:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let request =
            one(b"GET /execute?language=python&x=1 HTTP/1.1\r\nHost: a\r\nX-Thing:  v  \r\n\r\n");
        assert_eq!(request.method, "GET");
        assert_eq!(request.target, "/execute?language=python&x=1");
        assert_eq!(request.path, "/execute");
        assert_eq!(request.query, "language=python&x=1");
        assert_eq!(request.version_minor, 1);
        assert_eq!(request.header("host"), Some("a"));
        assert_eq!(request.header("x-thing"), Some("v"));
        assert_eq!(request.header("missing"), None);
        assert!(request.body.is_empty());
        assert!(request.keep_alive());
    }

    #[test]
    fn target_forms() {
        let request = one(b"GET http://example.com/a/b?q=1 HTTP/1.1\r\n\r\n");
        assert_eq!(
            (request.path.as_str(), request.query.as_str()),
            ("/a/b", "q=1")
        );
        let request = one(b"GET HTTPS://example.com HTTP/1.1\r\n\r\n");
        assert_eq!((request.path.as_str(), request.query.as_str()), ("/", ""));
        let request = one(b"OPTIONS * HTTP/1.1\r\n\r\n");
        assert_eq!(request.path, "*");
        let request = one(b"GET /p? HTTP/1.1\r\n\r\n");
        assert_eq!((request.path.as_str(), request.query.as_str()), ("/p", ""));
    }

    #[test]
    fn post_content_length_one_byte_at_a_time() {
        let raw = b"POST /execute HTTP/1.1\r\nContent-Length: 11\r\n\r\nprint(1+1)\n";
        let done = run_split(raw, 1).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].body, b"print(1+1)\n");
        for step in 2..raw.len() {
            assert_eq!(run_split(raw, step).unwrap(), done, "step {step}");
        }
    }

    #[test]
    fn partial_request_is_not_idle() {
        let mut parser = parser();
        assert!(parser.is_idle());
        parser.push(b"\r\n").unwrap();
        assert!(parser.is_idle(), "blank lines between requests are dropped");
        parser
            .push(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab")
            .unwrap();
        assert_eq!(parser.poll(), Ok(Progress::NeedMore));
        assert!(!parser.is_idle());
        assert_eq!(parser.buffered_len(), 2);
        parser.push(b"c").unwrap();
        assert!(matches!(parser.poll(), Ok(Progress::Done(_))));
        assert!(parser.is_idle());
        assert_eq!(parser.buffered_len(), 0);
    }

    const CHUNKED: &[u8] = b"POST /execute HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=value;other\r\nhello\r\n1A \t;ext\r\nabcdefghijklmnopqrstuvwxyz\r\n\
        000\r\nTrailer-One: x\r\nTrailer-Two: y\r\n\r\n";

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let request = one(CHUNKED);
        assert_eq!(request.body, b"helloabcdefghijklmnopqrstuvwxyz");
        assert_eq!(request.header("trailer-one"), None, "trailers are skipped");
    }

    #[test]
    fn chunked_split_everywhere() {
        let expected = one(CHUNKED);
        for split in 0..=CHUNKED.len() {
            let mut parser = parser();
            let (a, b) = CHUNKED.split_at(split);
            let mut done = run(&mut parser, a).unwrap();
            done.extend(run(&mut parser, b).unwrap());
            assert_eq!(
                done,
                vec![Progress::Done(expected.clone())],
                "split {split}"
            );
        }
        assert_eq!(run_split(CHUNKED, 1).unwrap(), vec![expected.clone()]);
        assert_eq!(run_split(CHUNKED, 7).unwrap(), vec![expected]);
    }

    #[test]
    fn empty_chunked_body() {
        let request = one(b"POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n");
        assert!(request.body.is_empty());
    }

    #[test]
    fn pipelined_requests_in_one_push() {
        let mut parser = parser();
        let progress = run(
            &mut parser,
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz\
              GET /b HTTP/1.1\r\n\r\n\
              POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nq\r\n0\r\n\r\nGET /d",
        )
        .unwrap();
        let paths: Vec<(&str, &[u8])> = progress
            .iter()
            .map(|p| match p {
                Progress::Done(r) => (r.path.as_str(), r.body.as_slice()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(paths, vec![("/a", &b"xyz"[..]), ("/b", b""), ("/c", b"q")]);
        assert!(!parser.is_idle(), "partial fourth request");
        let rest = run(&mut parser, b" HTTP/1.1\r\n\r\n").unwrap();
        assert!(matches!(rest.as_slice(), [Progress::Done(r)] if r.path == "/d"));
    }

    #[test]
    fn held_request_does_not_parse_the_next_one() {
        let mut parser = parser();
        parser
            .push(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nBROKEN\r\n\r\n")
            .unwrap();
        assert!(matches!(parser.poll(), Ok(Progress::Done(r)) if r.path == "/a"));
        assert!(matches!(parser.poll(), Ok(Progress::Done(r)) if r.path == "/b"));
        assert_eq!(parser.poll().unwrap_err().status, 400);
    }

    #[test]
    fn pipelined_overflow_is_reported_after_the_held_request() {
        let limits = Limits {
            max_header_bytes: 100,
            max_headers: 4,
            max_body_bytes: 100,
        };
        let mut parser = RequestParser::new(limits);
        parser.push(b"GET /a HTTP/1.1\r\n\r\n").unwrap();
        let filler = vec![b'a'; 40 * 1024];
        parser.push(&filler).unwrap();
        parser.push(&filler).unwrap();
        assert!(parser.buffered_len() <= 200 + PIPELINE_SLACK);
        assert!(matches!(parser.poll(), Ok(Progress::Done(r)) if r.path == "/a"));
        let error = parser.poll().unwrap_err();
        assert_eq!(error.status, 413);
        assert!(error.message.contains("buffer limit"), "{error}");
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &[u8]| one(raw).keep_alive();
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nConnection: foo\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ));
    }

    #[test]
    fn websocket_upgrade_detection() {
        let ws = |raw: &[u8]| one(raw).is_websocket_upgrade();
        assert!(ws(
            b"GET /ws HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\r\n"
        ));
        assert!(ws(
            b"GET /ws HTTP/1.1\r\nUpgrade: foo, websocket\r\nConnection: upgrade\r\n\r\n"
        ));
        assert!(!ws(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"));
        assert!(!ws(
            b"GET /ws HTTP/1.1\r\nUpgrade: websockets\r\nConnection: upgrade\r\n\r\n"
        ));
        assert!(!ws(
            b"HEAD /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        ));
    }

    #[test]
    fn continue_signalled_exactly_once() {
        let mut parser = parser();
        parser
            .push(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n")
            .unwrap();
        assert_eq!(parser.poll(), Ok(Progress::SendContinue));
        assert_eq!(parser.poll(), Ok(Progress::NeedMore));
        parser.push(b"ab").unwrap();
        assert_eq!(parser.poll(), Ok(Progress::NeedMore));
        parser.push(b"cd").unwrap();
        let Ok(Progress::Done(request)) = parser.poll() else {
            panic!("expected request");
        };
        assert!(request.expects_continue());
        assert_eq!(request.body, b"abcd");
        // The next request gets its own signal.
        parser
            .push(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        assert_eq!(parser.poll(), Ok(Progress::SendContinue));
        assert_eq!(parser.poll(), Ok(Progress::NeedMore));
    }

    #[test]
    fn no_continue_when_not_needed() {
        // Body already here, HTTP/1.0, or no body: never SendContinue.
        for raw in [
            &b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"[..],
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
        ] {
            let mut parser = parser();
            let progress = run(&mut parser, raw).unwrap();
            assert!(!progress.contains(&Progress::SendContinue), "{progress:?}");
        }
    }

    #[test]
    fn no_body_without_length_for_get_head_delete() {
        for method in ["GET", "HEAD", "DELETE", "OPTIONS"] {
            let raw = format!("{method} / HTTP/1.1\r\n\r\n");
            assert!(one(raw.as_bytes()).body.is_empty());
        }
        let request = one(b"DELETE /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(request.body, b"ok");
    }

    #[test]
    fn head_check_refuses_before_the_body_and_before_100_continue() {
        let check = HeadCheck::new(|request: &Request| {
            if request.header("authorization") == Some("Bearer ok") {
                Ok(())
            } else {
                Err(HttpError::new(401, "no key"))
            }
        });
        // The head alone decides: no body byte was sent, a 100 Continue is never offered.
        let mut checked = parser().with_head_check(check.clone());
        let error = checked
            .push(b"POST /execute HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
            .unwrap_err();
        assert_eq!((error.status, error.message.as_str()), (401, "no key"));
        assert_eq!(checked.poll(), Err(error));
        // It runs before the body's framing is judged (a too-large body would be 413).
        let mut checked = parser().with_head_check(check.clone());
        let error = checked
            .push(b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n")
            .unwrap_err();
        assert_eq!(error.status, 401);
        // Accepted heads parse as usual, each pipelined request checked on its own.
        let mut checked = parser().with_head_check(check);
        checked
            .push(
                b"POST / HTTP/1.1\r\nAuthorization: Bearer ok\r\nContent-Length: 2\r\n\r\nhi\
                  GET / HTTP/1.1\r\n\r\n",
            )
            .unwrap();
        match checked.poll() {
            Ok(Progress::Done(request)) => assert_eq!(request.body, b"hi"),
            other => panic!("expected the first request, got {other:?}"),
        }
        assert_eq!(checked.poll().unwrap_err().status, 401);
    }

    #[test]
    fn content_length_variants() {
        assert_eq!(
            one(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok").body,
            b"ok"
        );
        assert_eq!(
            one(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok").body,
            b"ok"
        );
        assert_eq!(
            one(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body,
            b""
        );
    }

    #[test]
    fn error_oversized_head() {
        let mut raw = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        raw.extend(vec![b'a'; 17 * 1024]);
        let e = error(&raw);
        assert_eq!(
            (e.status, e.message.as_str()),
            (431, "request headers exceed 16384 bytes")
        );
        // Complete head that is too long is rejected the same way.
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(error(&raw).status, 431);
        // And byte by byte: rejected as soon as the limit is crossed.
        let mut parser = parser();
        let mut failed_at = None;
        for (i, byte) in raw.iter().enumerate() {
            if parser.push(std::slice::from_ref(byte)).is_err() {
                failed_at = Some(i);
                break;
            }
        }
        assert_eq!(failed_at, Some(16 * 1024));
    }

    #[test]
    fn error_too_many_headers() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..65 {
            raw.extend(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let e = error(&raw);
        assert_eq!(e.status, 431);
        assert!(e.message.contains("64"), "{e}");
    }

    #[test]
    fn error_declared_length_too_large_before_body() {
        let e =
            error(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1048577\r\n\r\n");
        assert_eq!(
            (e.status, e.message.as_str()),
            (413, "request body is larger than the 1048576-byte limit")
        );
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n").status,
            400,
            "overflowing length"
        );
        // Exactly at the limit is fine.
        let mut parser = parser();
        parser
            .push(b"POST / HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n")
            .unwrap();
        assert_eq!(parser.poll(), Ok(Progress::NeedMore));
    }

    #[test]
    fn error_chunked_body_too_large() {
        let limits = Limits {
            max_body_bytes: 10,
            ..Limits::default()
        };
        let e = error_with(
            limits,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n5\r\n",
        );
        assert_eq!(
            (e.status, e.message.as_str()),
            (413, "request body is larger than the 10-byte limit")
        );
        let e = error_with(
            limits,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffffff\r\n",
        );
        assert_eq!(e.status, 413);
        // Exactly at the limit is fine.
        let mut parser = RequestParser::new(limits);
        let done = run(
            &mut parser,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n",
        )
        .unwrap();
        assert!(matches!(done.as_slice(), [Progress::Done(r)] if r.body == b"abcdefghij"));
    }

    #[test]
    fn error_bad_chunk_framing() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (body, needle) in [
            (&b"zz\r\n"[..], "invalid chunk size line \"zz\\r\\n\""),
            (b"\r\n", "invalid chunk size"),
            (b"-1\r\n", "invalid chunk size"),
            (b"5 x\r\n", "invalid chunk size"),
            (b"5;a\rb\r\n", "invalid chunk size"),
            (b"5\n", "not terminated by crlf"),
            (b"2\r\nabX", "not followed by crlf"),
            (b"2\r\nab\rX", "not followed by crlf"),
            (b"0\r\nTrailer: x\n", "trailer line is not terminated"),
        ] {
            let mut raw = head.to_vec();
            raw.extend_from_slice(body);
            let e = error(&raw);
            assert_eq!(e.status, 400, "{body:?}");
            assert!(e.message.contains(needle), "{body:?}: {e}");
        }
        let mut raw = head.to_vec();
        raw.extend(vec![b'0'; MAX_CHUNK_LINE + 1]);
        let e = error(&raw);
        assert_eq!(e.status, 400);
        assert!(e.message.contains("4096"), "{e}");
        let mut raw = head.to_vec();
        raw.extend_from_slice(b"0\r\nX: ");
        raw.extend(vec![b'a'; 17 * 1024]);
        assert_eq!(error(&raw).status, 431);
    }

    #[test]
    fn error_both_lengths() {
        let e =
            error(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(e.status, 400);
        assert!(e.message.contains("both"), "{e}");
    }

    #[test]
    fn error_unsupported_transfer_encoding() {
        for value in [
            "gzip",
            "gzip, chunked",
            "chunked, chunked",
            "chunked;q=1",
            "",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {value}\r\n\r\n");
            let e = error(raw.as_bytes());
            assert_eq!(e.status, 501, "{value}");
            assert!(e.message.contains(&format!("{value:?}")), "{e}");
        }
    }

    #[test]
    fn error_bad_content_length() {
        for value in ["abc", "-1", "+5", "1 2", "", "5,", "0x10"] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            let e = error(raw.as_bytes());
            assert_eq!(e.status, 400, "{value}");
            assert!(e.message.contains("invalid content-length"), "{e}");
        }
        let e = error(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert_eq!(
            (e.status, e.message.as_str()),
            (400, "conflicting content-length values 5 and 6")
        );
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n").status,
            400
        );
    }

    #[test]
    fn error_post_without_length() {
        for method in ["POST", "PUT", "PATCH"] {
            let e = error(format!("{method} /execute HTTP/1.1\r\n\r\n").as_bytes());
            assert_eq!(e.status, 411);
            assert!(e.message.contains(method), "{e}");
        }
    }

    #[test]
    fn error_garbage_request_line() {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"hello world\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"G\x00T / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            let e = error(raw);
            assert_eq!(e.status, 400, "{raw:?}");
            assert!(e.message.starts_with("malformed request line"), "{e}");
        }
        let e = error(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n");
        assert_eq!(e.status, 400);
    }

    #[test]
    fn error_http2_preface_and_bad_versions() {
        let e = error(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(
            (e.status, e.message.as_str()),
            (505, "unsupported http version \"HTTP/2.0\"")
        );
        assert_eq!(error(b"GET / HTTP/1.2\r\n\r\n").status, 505);
        assert_eq!(error(b"GET / HTTP/3\r\n").status, 505);
        // Rejected as soon as the request line is visible, without waiting for the head end.
        let mut parser = parser();
        assert_eq!(parser.push(b"PRI * HTTP/2.0\r\n").unwrap_err().status, 505);
    }

    #[test]
    fn error_non_utf8_header_value() {
        let e = error(b"GET / HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n");
        assert_eq!(
            (e.status, e.message.as_str()),
            (400, "header \"X-Name\" has a value that is not valid utf-8")
        );
        assert_eq!(
            one("GET / HTTP/1.1\r\nX-Name: café\r\n\r\n".as_bytes()).header("x-name"),
            Some("café")
        );
    }

    #[test]
    fn error_messages_truncate_long_values() {
        let mut raw = b"GET /".to_vec();
        raw.extend(vec![b'a'; 1000]);
        raw.extend_from_slice(b" HTTP/9.9\r\n\r\n");
        let e = error(&raw);
        assert!(e.message.len() < 200, "{e}");
    }

    /// xorshift64: deterministic, dependency-free randomness for the fuzz loops.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Feeds `data` in random-size pieces, polling after each, checking invariants.
    fn feed_randomly(rng: &mut Rng, limits: Limits, data: &[u8]) -> usize {
        let mut completed = 0;
        let mut parser = RequestParser::new(limits);
        let mut rest = data;
        while !rest.is_empty() {
            let (piece, after) = rest.split_at(1 + rng.below(rest.len().min(64)));
            rest = after;
            let pushed = parser.push(piece);
            loop {
                match parser.poll() {
                    Ok(Progress::NeedMore) | Err(_) => break,
                    Ok(Progress::Done(request)) => {
                        completed += 1;
                        assert!(request.body.len() <= limits.max_body_bytes);
                        assert!(request.headers.len() <= limits.max_headers);
                    }
                    Ok(Progress::SendContinue) => {}
                    Ok(Progress::Head(_) | Progress::Body(_) | Progress::BodyEnd) => {
                        unreachable!("no streamed bodies without a stream check")
                    }
                }
            }
            assert!(
                parser.buffered_len()
                    <= 2 * (limits.max_header_bytes + limits.max_body_bytes) + PIPELINE_SLACK + 64
            );
            if pushed.is_err() {
                assert!(parser.poll().is_err());
                return completed;
            }
        }
        completed
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let limits = Limits {
            max_header_bytes: 256,
            max_headers: 8,
            max_body_bytes: 64,
        };
        let alphabet = b"GETPOST /?HTTP/1.01\r\n:;, \tabc0123456789fF-xContent-LengthTransfer-Encodingchunked\xff\x00";
        for _ in 0..4000 {
            let len = rng.below(400);
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(2) == 0 {
                        rng.next() as u8
                    } else {
                        alphabet[rng.below(alphabet.len())]
                    }
                })
                .collect();
            feed_randomly(&mut rng, limits, &data);
        }
    }

    #[test]
    fn mutated_valid_requests_never_panic() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let limits = Limits {
            max_header_bytes: 512,
            max_headers: 16,
            max_body_bytes: 128,
        };
        let seeds: [&[u8]; 4] = [
            CHUNKED,
            b"POST /execute?language=bash HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\necho!",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET / HTTP/1.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
        ];
        let mut completed = 0;
        for _ in 0..4000 {
            let mut data = seeds[rng.below(seeds.len())].to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(data.len());
                match rng.below(3) {
                    0 => data[at] = rng.next() as u8,
                    1 => {
                        data.remove(at);
                    }
                    _ => data.insert(at, b"\r\n0:;9aF "[rng.below(9)]),
                }
            }
            let copies = 1 + rng.below(3);
            let data = data.repeat(copies);
            completed += feed_randomly(&mut rng, limits, &data);
        }
        // The mutations must leave many requests valid, or deep parser states go untested.
        assert!(completed > 1000, "only {completed} requests completed");
    }

    fn streaming_parser(limits: Limits) -> RequestParser {
        RequestParser::new(limits)
            .with_streamed_bodies(StreamCheck::new(|request| request.method == "PUT"))
    }

    /// A streamed body: its head at once, then its pieces (past `max_body_bytes`), its end,
    /// then the next pipelined request as usual.
    #[test]
    fn streamed_bodies_come_in_pieces_without_the_body_limit() {
        let limits = Limits {
            max_body_bytes: 4,
            ..Limits::default()
        };
        let mut parser = streaming_parser(limits);
        let head = b"PUT /sandboxes/x/files?path=a HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
        let progress = run(&mut parser, head).unwrap();
        let [Progress::Head(request)] = progress.as_slice() else {
            panic!("{progress:?}")
        };
        assert_eq!(request.path, "/sandboxes/x/files");
        assert!(request.body.is_empty());
        assert!(parser.is_streaming() && !parser.is_idle());
        assert_eq!(
            run(&mut parser, b"01234").unwrap(),
            [Progress::Body(b"01234".to_vec())]
        );
        let progress = run(&mut parser, b"56789GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            progress[..2],
            [Progress::Body(b"56789".to_vec()), Progress::BodyEnd]
        );
        assert!(matches!(&progress[2], Progress::Done(request) if request.method == "GET"));
        assert!(parser.is_idle());
        // A request that is not streamed keeps the limit.
        let mut parser = streaming_parser(limits);
        let error = run(
            &mut parser,
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n",
        )
        .unwrap_err();
        assert_eq!(error.status, 413);
    }

    #[test]
    fn streamed_chunked_bodies_and_continue() {
        let mut parser = streaming_parser(Limits::default());
        let bytes =
            b"PUT /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n";
        let progress = run(&mut parser, bytes).unwrap();
        assert!(matches!(progress[0], Progress::Head(_)), "{progress:?}");
        assert_eq!(progress[1..], [Progress::SendContinue]);
        let mut body = Vec::new();
        let mut ended = false;
        for byte in b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n" {
            for progress in run(&mut parser, &[*byte]).unwrap() {
                match progress {
                    Progress::Body(piece) => body.extend(piece),
                    Progress::BodyEnd => ended = true,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(body, b"abcde");
        assert!(ended && parser.is_idle());
        // Unread pieces are what the caller bounds its reading by.
        let mut parser = streaming_parser(Limits::default());
        parser
            .push(b"PUT /f HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
            .unwrap();
        parser.push(&[7; 60]).unwrap();
        assert_eq!(parser.streamed_bytes(), 60);
        // A bad chunk is an error, and what came before it is dropped with the request.
        let mut parser = streaming_parser(Limits::default());
        let head = b"PUT /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            run(&mut parser, head).unwrap()[..],
            [Progress::Head(_)]
        ));
        parser.push(b"2\r\nabXX").unwrap_err();
        assert!(parser.poll().is_err());
        assert_eq!(parser.streamed_bytes(), 0);
    }

    /// A relayed request (a port, issue 20) is returned after its head, whatever its framing
    /// says; the bytes behind it are the caller's, unparsed, and nothing more is parsed.
    #[test]
    fn a_relayed_request_stops_the_parser_after_its_head() {
        let relay = RelayCheck::new(|request| request.path.starts_with("/ports/"));
        let mut parser = RequestParser::new(Limits::default()).with_relay_check(relay);
        parser
            .push(b"POST /ports/x/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
            .unwrap();
        let Ok(Progress::Done(request)) = parser.poll() else {
            panic!("the head alone is the request")
        };
        assert_eq!(request.path, "/ports/x/up");
        assert!(request.body.is_empty());
        assert!(parser.is_raw());
        assert_eq!(parser.take_raw(), b"5\r\nhel");
        parser
            .push(b"lo\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n")
            .unwrap();
        assert_eq!(parser.poll(), Ok(Progress::NeedMore));
        assert_eq!(parser.take_raw(), b"lo\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        // Other requests are parsed as before.
        let relay = RelayCheck::new(|request| request.path.starts_with("/ports/"));
        let mut parser = RequestParser::new(Limits::default()).with_relay_check(relay);
        parser.push(b"GET /status HTTP/1.1\r\n\r\n").unwrap();
        assert!(matches!(parser.poll(), Ok(Progress::Done(_))));
        assert!(!parser.is_raw());
    }
}
