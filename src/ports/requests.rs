//! The requests of one path-form connection to a port, framed on their way into the sandbox
//! (issue 20): HTTP/1.1 keep-alive and pipelining through `/ports/<capability>/...`, without I/O.
//!
//! Every request's head is parsed (with the server's header limits and its key check) and
//! rewritten like the first one ([`super::upstream_head`]: the prefix taken off,
//! `X-Forwarded-*` set). Its body is passed on as it comes, undecoded: its framing
//! (`Content-Length`, or chunks up to the last one and its trailers) is followed only to find
//! where the next head starts, with the parser's rules (CRLF only, no ambiguous framing), so
//! that this relay and the application agree on where each request ends. Responses are not
//! looked at: they come back in order, as the application sends them.
//!
//! Where following stops:
//! - after the head (and body) of an upgrade (WebSocket) or a `CONNECT`: the connection then
//!   belongs to the application, and bytes pass as they are ([`State::Tunnel`]);
//! - at a request that is not for this port (another capability, a path outside `/ports/`):
//!   nothing more is passed on ([`Flow::Leave`]). The caller half-closes towards the
//!   application, the connection closes after the answers asked for so far, and the client sends
//!   that request again on a new connection, as HTTP clients do when a kept-alive connection
//!   closes before answering;
//! - at bad input ([`Flow::Refuse`]): the same, and the client gets the error (400, 431, ...)
//!   after those answers.
//!
//! Nothing is held but a partial head (up to the header limit), a partial chunk-size line or a
//! partial trailer line (bounded like a head): each is passed on once it is whole and valid.

use memchr::memchr;

use super::{forwarded_proto, is_tunnel, route, upstream_head, PortRoute, UpstreamHead};
use crate::http::request::{
    body_length, parse_chunk_size, BodyLength, HeadCheck, HttpError, Limits, Progress, RelayCheck,
    Request, RequestParser, MAX_CHUNK_LINE,
};
use crate::session::token::same;

/// What the caller does after [`RequestFraming::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading the client.
    Open,
    /// A request for something other than this port: pass nothing more on.
    Leave,
    /// Bad input: pass nothing more on; answer this once the answers already asked for are out.
    Refuse(HttpError),
}

#[derive(Debug)]
enum State {
    /// Between requests, or in a head.
    Head(Box<RequestParser>),
    /// Bytes of a `Content-Length` body still to come.
    Length(u64),
    Chunked(Chunk),
    /// Upgraded: the rest is the application's.
    Tunnel,
    /// Left or refused: nothing more is passed on.
    Stopped,
}

/// Where a chunked body is.
#[derive(Debug)]
enum Chunk {
    /// The size line so far.
    Size(Vec<u8>),
    /// Bytes of the chunk's data still to come.
    Data(u64),
    /// The CRLF after a chunk's data: how many of its bytes came.
    DataEnd(usize),
    /// The trailer section after the last chunk, up to its empty line.
    Trailers {
        /// The current line so far (passed on once it is known to end with CRLF).
        line: Vec<u8>,
        /// Bytes of the trailer section so far (bounded like a head).
        total: usize,
    },
}

/// The framing of the requests a client sends through one path-form port connection.
#[derive(Debug)]
pub struct RequestFraming {
    capability: String,
    limits: Limits,
    head_check: Option<HeadCheck>,
    /// `SANDBOX_PORTS_REQUIRE_KEY`: the key is checked on every request, then dropped.
    drop_authorization: bool,
    state: State,
    /// The request being passed on is an upgrade: a tunnel after its body.
    upgrade: bool,
    /// Heads passed on after the first request's.
    later_heads: u64,
}

impl RequestFraming {
    /// Follows the requests after `first`, whose rewritten head the caller sent already: from
    /// `first`'s body on. Its body's framing is checked here (ambiguous framing: an error).
    pub fn after(
        first: &Request,
        capability: &str,
        limits: Limits,
        head_check: Option<HeadCheck>,
        drop_authorization: bool,
    ) -> Result<Self, HttpError> {
        let mut framing = RequestFraming {
            capability: capability.to_string(),
            limits,
            head_check,
            drop_authorization,
            state: State::Stopped,
            upgrade: false,
            later_heads: 0,
        };
        let body = framing.body_of(first)?;
        framing.start_body(first, body);
        Ok(framing)
    }

    /// How `request`'s body is framed. Bodies are streamed with back-pressure, never held: the
    /// API's limit for bodies it holds in memory does not apply (as for file uploads). A request
    /// without `Content-Length` or `Transfer-Encoding` has no body (RFC 9112 6.3): the API's
    /// demand for a length on a `POST` (411) is not the application's.
    fn body_of(&self, request: &Request) -> Result<BodyLength, HttpError> {
        if request.header("content-length").is_none()
            && request.header("transfer-encoding").is_none()
        {
            return Ok(BodyLength::None);
        }
        let limits = Limits {
            max_body_bytes: usize::MAX,
            ..self.limits
        };
        body_length(request, &limits)
    }

    /// How many requests after the first were passed on (their heads).
    pub fn later_heads(&self) -> u64 {
        self.later_heads
    }

    /// Whether nothing of a request is under way (between requests, nothing partial held):
    /// what the client sent so far is complete.
    pub fn is_between_requests(&self) -> bool {
        matches!(&self.state, State::Head(parser) if parser.is_idle())
    }

    /// Frames `input` from the client; what goes to the application is appended to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Flow {
        // The bytes after a head, when a head completes (owned by its parser until then).
        let mut carried: Vec<u8>;
        let mut rest = input;
        while !rest.is_empty() {
            match &mut self.state {
                State::Head(parser) => {
                    if let Err(error) = parser.push(rest) {
                        return self.stop(Flow::Refuse(error));
                    }
                    let request = match parser.poll() {
                        Ok(Progress::Done(request)) => request,
                        Err(error) => return self.stop(Flow::Refuse(error)),
                        // A parser that relays every head gives nothing else: the head is
                        // not complete yet, and the parser holds what came of it.
                        Ok(_) => return Flow::Open,
                    };
                    carried = parser.take_raw();
                    rest = &carried;
                    if let Err(flow) = self.begin(&request, out) {
                        return self.stop(flow);
                    }
                }
                State::Length(remaining) => {
                    let take = rest
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.end_body();
                    }
                }
                State::Chunked(chunk) => {
                    let (used, done) = match chunk.follow(rest, self.limits.max_header_bytes, out) {
                        Ok(progress) => progress,
                        Err(error) => return self.stop(Flow::Refuse(error)),
                    };
                    rest = &rest[used..];
                    if done {
                        self.end_body();
                    }
                }
                State::Tunnel => {
                    out.extend_from_slice(rest);
                    return Flow::Open;
                }
                State::Stopped => return Flow::Leave,
            }
        }
        Flow::Open
    }

    fn stop(&mut self, flow: Flow) -> Flow {
        self.state = State::Stopped;
        flow
    }

    /// A later request's head: for this port, allowed, framed unambiguously; its rewritten head
    /// goes out.
    fn begin(&mut self, request: &Request, out: &mut Vec<u8>) -> Result<(), Flow> {
        let target = match route(request, None) {
            Some(PortRoute::Target(target)) if same(&self.capability, &target.capability) => target,
            _ => return Err(Flow::Leave),
        };
        if let Some(check) = &self.head_check {
            check.check(request).map_err(Flow::Refuse)?;
        }
        let body = self.body_of(request).map_err(Flow::Refuse)?;
        out.extend_from_slice(&upstream_head(
            request,
            &UpstreamHead {
                target: &target,
                proto: forwarded_proto(request),
                close: false,
                drop_authorization: self.drop_authorization,
            },
        ));
        self.later_heads += 1;
        self.start_body(request, body);
        Ok(())
    }

    fn start_body(&mut self, request: &Request, body: BodyLength) {
        self.upgrade = is_tunnel(request);
        match body {
            BodyLength::Length(length) if length > 0 => self.state = State::Length(length),
            BodyLength::Chunked => self.state = State::Chunked(Chunk::Size(Vec::new())),
            BodyLength::Length(_) | BodyLength::None => self.end_body(),
        }
    }

    fn end_body(&mut self) {
        self.state = if self.upgrade {
            State::Tunnel
        } else {
            // Every head is handed back at once, with what follows it (see `push`).
            let parser =
                RequestParser::new(self.limits).with_relay_check(RelayCheck::new(|_| true));
            State::Head(Box::new(parser))
        };
    }
}

impl Chunk {
    /// Follows chunked framing over `input`, passing on to `out` what is known to be good:
    /// chunk data as it comes, a size line or a trailer line once it is whole and valid (so the
    /// bytes passed on do not depend on how the input was split, also when it turns out bad).
    /// (Bytes of `input` used, whether the body ended with them.) `max_trailer_bytes` bounds
    /// the trailer section like a head.
    fn follow(
        &mut self,
        input: &[u8],
        max_trailer_bytes: usize,
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), HttpError> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match self {
                Chunk::Size(line) => {
                    let take = memchr(b'\n', rest).map_or(rest.len(), |end| end + 1);
                    if line.len() + take > MAX_CHUNK_LINE {
                        return Err(HttpError::new(
                            400,
                            format!("chunk size line exceeds {MAX_CHUNK_LINE} bytes"),
                        ));
                    }
                    line.extend_from_slice(&rest[..take]);
                    used += take;
                    if line.ends_with(b"\n") {
                        let size = parse_chunk_size(line)?;
                        if size == u64::MAX {
                            // Saturated: the application could read another size than this.
                            return Err(HttpError::new(400, "chunk size is too large"));
                        }
                        out.extend_from_slice(line);
                        *self = if size == 0 {
                            Chunk::Trailers {
                                line: Vec::new(),
                                total: 0,
                            }
                        } else {
                            Chunk::Data(size)
                        };
                    }
                }
                Chunk::Data(remaining) => {
                    let take = rest
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..take]);
                    used += take;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        *self = Chunk::DataEnd(0);
                    }
                }
                Chunk::DataEnd(seen) => {
                    if rest[0] != b"\r\n"[*seen] {
                        return Err(HttpError::new(400, "chunk data is not followed by crlf"));
                    }
                    out.push(rest[0]);
                    used += 1;
                    *seen += 1;
                    if *seen == 2 {
                        *self = Chunk::Size(Vec::new());
                    }
                }
                Chunk::Trailers { line, total } => {
                    let take = memchr(b'\n', rest).map_or(rest.len(), |end| end + 1);
                    *total += take;
                    if *total > max_trailer_bytes {
                        return Err(HttpError::new(
                            431,
                            format!("request trailers exceed {max_trailer_bytes} bytes"),
                        ));
                    }
                    line.extend_from_slice(&rest[..take]);
                    used += take;
                    if line.ends_with(b"\n") {
                        if !line.ends_with(b"\r\n") {
                            return Err(HttpError::new(
                                400,
                                "chunked trailer line is not terminated by crlf",
                            ));
                        }
                        out.extend_from_slice(line);
                        if line.len() == 2 {
                            return Ok((used, true));
                        }
                        line.clear();
                    }
                }
            }
        }
        Ok((used, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: &str = "0123456789abcdef0123456789abcdef";

    /// The first request as the connection's parser hands it over (head only).
    fn first(head: &str) -> Request {
        let mut parser =
            RequestParser::new(Limits::default()).with_relay_check(RelayCheck::new(|_| true));
        parser.push(head.as_bytes()).unwrap();
        match parser.poll().unwrap() {
            Progress::Done(request) => request,
            other => panic!("{other:?}"),
        }
    }

    fn framing_after(head: &str) -> RequestFraming {
        RequestFraming::after(&first(head), CAP, Limits::default(), None, false).unwrap()
    }

    const GET: &str = "GET /ports/0123456789abcdef0123456789abcdef/ HTTP/1.1\r\nHost: h\r\n\r\n";

    /// Pushes `input` in pieces of `size` bytes; what goes out and the last flow.
    fn pushed(framing: &mut RequestFraming, input: &[u8], size: usize) -> (String, Flow) {
        let mut out = Vec::new();
        let mut flow = Flow::Open;
        for piece in input.chunks(size.max(1)) {
            flow = framing.push(piece, &mut out);
            if flow != Flow::Open {
                break;
            }
        }
        (String::from_utf8(out).unwrap(), flow)
    }

    fn upstream(target: &str, extra: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nhost: h\r\n{extra}x-forwarded-host: h\r\nx-forwarded-proto: http\r\nx-forwarded-prefix: /ports/{CAP}\r\n\r\n"
        )
    }

    #[test]
    fn pipelined_requests_each_lose_their_prefix() {
        let mut framing = framing_after(GET);
        assert!(framing.is_between_requests());
        let input = format!(
            "GET /ports/{CAP}/a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nGET /ports/{CAP}/b HTTP/1.1\r\nHost: h\r\nX-Forwarded-Prefix: /evil\r\n\r\n"
        );
        for size in [1, 7, input.len()] {
            let mut framing = framing_after(GET);
            let (out, flow) = pushed(&mut framing, input.as_bytes(), size);
            assert_eq!(flow, Flow::Open);
            assert_eq!(out, upstream("/a?x=1", "") + &upstream("/b", ""));
            assert!(framing.is_between_requests());
            assert_eq!(framing.later_heads(), 2, "counted once each");
        }
        let (out, _) = pushed(&mut framing, b"GET /ports/", 100);
        assert_eq!(out, "");
        assert!(!framing.is_between_requests(), "a partial head is held");
        assert_eq!(framing.later_heads(), 0, "not passed on yet");
    }

    #[test]
    fn content_length_bodies_pass_untouched_then_the_next_head_is_read() {
        let post =
            format!("POST /ports/{CAP}/up HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n");
        // The body is 11 bytes, whatever they look like (here: the start of a head).
        let body = "GET /ports/";
        let next = format!("GET /ports/{CAP}/next HTTP/1.1\r\nHost: h\r\n\r\n");
        // Without a length, a request has no body (the API would answer 411).
        let bare = format!("POST /ports/{CAP}/bare HTTP/1.1\r\nHost: h\r\n\r\n");
        let (out, flow) = pushed(
            &mut framing_after(GET),
            format!("{bare}{next}").as_bytes(),
            9,
        );
        assert_eq!(flow, Flow::Open);
        let bare_upstream = upstream("/bare", "").replacen("GET", "POST", 1);
        assert_eq!(out, format!("{bare_upstream}{}", upstream("/next", "")));
        assert!(framing_after(&bare).is_between_requests());
        for size in [1, 4, 100] {
            let mut framing = framing_after(&post);
            assert!(!framing.is_between_requests(), "the first body is due");
            let (out, flow) = pushed(&mut framing, format!("{body}{next}").as_bytes(), size);
            assert_eq!(flow, Flow::Open);
            assert_eq!(out, format!("{body}{}", upstream("/next", "")));
            assert!(framing.is_between_requests());
        }
    }

    #[test]
    fn chunked_bodies_are_followed_split_at_every_byte() {
        let post = format!(
            "POST /ports/{CAP}/up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let body = "5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\n";
        let next = format!("GET /ports/{CAP}/next HTTP/1.1\r\nHost: h\r\n\r\n");
        let input = format!("{body}{next}");
        let expected = format!("{body}{}", upstream("/next", ""));
        for split in 0..=input.len() {
            let mut framing = framing_after(&post);
            let mut out = Vec::new();
            assert_eq!(
                framing.push(&input.as_bytes()[..split], &mut out),
                Flow::Open
            );
            assert_eq!(
                framing.push(&input.as_bytes()[split..], &mut out),
                Flow::Open
            );
            assert_eq!(
                String::from_utf8(out).unwrap(),
                expected,
                "split at {split}"
            );
            assert!(framing.is_between_requests(), "split at {split}");
        }
        let (out, flow) = pushed(&mut framing_after(&post), input.as_bytes(), 1);
        assert_eq!((out, flow), (expected, Flow::Open));
    }

    #[test]
    fn bad_framing_is_refused_with_the_reason() {
        let chunked =
            format!("POST /ports/{CAP}/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
        let cases: [(&str, &str, u16, &str); 6] = [
            (&chunked, "zz\r\n", 400, "invalid chunk size line \"zz"),
            (&chunked, "5\nhello", 400, "not terminated by crlf"),
            (&chunked, "2\r\nhiXX", 400, "chunk data is not followed by crlf"),
            (&chunked, "0\r\nX: 1\n", 400, "trailer line is not terminated"),
            (GET, "GARBAGE\r\n\r\n", 400, "malformed request line"),
            (
                GET,
                "POST /ports/0123456789abcdef0123456789abcdef/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
                "both content-length and transfer-encoding",
            ),
        ];
        for (head, input, status, words) in cases {
            for size in [1, input.len()] {
                let mut framing = framing_after(head);
                let (_, flow) = pushed(&mut framing, input.as_bytes(), size);
                let Flow::Refuse(error) = flow else {
                    panic!("{input:?}: {flow:?}");
                };
                assert_eq!(error.status, status, "{input:?}");
                assert!(
                    error.message.contains(words),
                    "{input:?}: {}",
                    error.message
                );
                // Nothing more is passed on.
                let mut out = Vec::new();
                assert_eq!(framing.push(GET.as_bytes(), &mut out), Flow::Leave);
                assert!(out.is_empty());
            }
        }
        let too_long = format!("{}\r\n", "1".repeat(MAX_CHUNK_LINE));
        let (_, flow) = pushed(&mut framing_after(&chunked), too_long.as_bytes(), 1000);
        assert!(
            matches!(flow, Flow::Refuse(ref e) if e.message.contains("exceeds")),
            "{flow:?}"
        );
        let saturated = format!("{}\r\n", "f".repeat(40));
        let (_, flow) = pushed(&mut framing_after(&chunked), saturated.as_bytes(), 1000);
        assert!(
            matches!(flow, Flow::Refuse(ref e) if e.message.contains("too large")),
            "{flow:?}"
        );
        // A first request with ambiguous framing is refused before anything is relayed.
        let both = first(&format!(
            "POST /ports/{CAP}/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ));
        let error = RequestFraming::after(&both, CAP, Limits::default(), None, false).unwrap_err();
        assert!(
            error.message.contains("conflicting content-length"),
            "{error}"
        );
    }

    /// A size line (or trailer line) goes on only once it is whole and valid: what the
    /// application gets does not depend on how the client's bytes were split (found by the
    /// `port_requests` fuzz target).
    #[test]
    fn a_bad_size_line_is_not_passed_on_whatever_the_split() {
        let head = format!("POST /ports/{CAP}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        for size in [1, 3, 100] {
            let mut framing = framing_after(&head);
            let (out, flow) = pushed(&mut framing, b"3\r\nabc\r\n3456789a+cdef\r\n", size);
            assert_eq!(out, "3\r\nabc\r\n", "split in pieces of {size}");
            assert!(
                matches!(flow, Flow::Refuse(ref e) if e.status == 400),
                "{flow:?}"
            );
            let mut framing = framing_after(&head);
            let (out, flow) = pushed(&mut framing, b"0\r\nX-T: 1\n", size);
            assert_eq!(out, "0\r\n", "a trailer line without CR, pieces of {size}");
            assert!(
                matches!(flow, Flow::Refuse(ref e) if e.status == 400),
                "{flow:?}"
            );
        }
    }

    #[test]
    fn the_limits_hold_for_every_request() {
        let limits = Limits {
            max_header_bytes: 256,
            ..Limits::default()
        };
        let mut framing = RequestFraming::after(&first(GET), CAP, limits, None, false).unwrap();
        let small = format!("GET /ports/{CAP}/ HTTP/1.1\r\nHost: h\r\n\r\n");
        let big = format!(
            "GET /ports/{CAP}/ HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "a".repeat(300)
        );
        let (_, flow) = pushed(&mut framing, small.repeat(3).as_bytes(), 5);
        assert_eq!(flow, Flow::Open, "small heads, one after the other");
        let (_, flow) = pushed(&mut framing, big.as_bytes(), 5);
        assert!(
            matches!(flow, Flow::Refuse(ref e) if e.status == 431),
            "{flow:?}"
        );
        // Trailers are bounded like heads.
        let chunked = format!("POST /ports/{CAP}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        let mut framing =
            RequestFraming::after(&first(&chunked), CAP, limits, None, false).unwrap();
        let trailers = format!("0\r\nX: {}\r\n\r\n", "b".repeat(300));
        let (_, flow) = pushed(&mut framing, trailers.as_bytes(), 7);
        assert!(
            matches!(flow, Flow::Refuse(ref e) if e.status == 431),
            "{flow:?}"
        );
        // The key check runs on every head.
        let check = HeadCheck::new(|request| match request.header("authorization") {
            Some("Bearer k") => Ok(()),
            _ => Err(HttpError::new(401, "a valid api key is needed")),
        });
        let mut framing =
            RequestFraming::after(&first(GET), CAP, Limits::default(), Some(check), true).unwrap();
        let with_key = format!("GET /ports/{CAP}/ HTTP/1.1\r\nAuthorization: Bearer k\r\n\r\n");
        let (out, flow) = pushed(&mut framing, with_key.as_bytes(), 100);
        assert_eq!(flow, Flow::Open);
        assert!(!out.to_lowercase().contains("authorization"), "{out}");
        let (_, flow) = pushed(&mut framing, small.as_bytes(), 100);
        assert!(
            matches!(flow, Flow::Refuse(ref e) if e.status == 401),
            "{flow:?}"
        );
    }

    #[test]
    fn other_targets_end_the_relay_and_upgrades_make_a_tunnel() {
        let other_cap = GET.replace(CAP, &"f".repeat(32));
        for input in [other_cap.as_str(), "GET /status HTTP/1.1\r\n\r\n"] {
            let (out, flow) = pushed(&mut framing_after(GET), input.as_bytes(), 100);
            assert_eq!((out.as_str(), flow), ("", Flow::Leave), "{input}");
        }
        // A WebSocket upgrade on a kept-alive connection: its head is rewritten, then the
        // frames pass as they are (they would be malformed heads otherwise).
        let upgrade = format!(
            "GET /ports/{CAP}/ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        );
        let mut framing = framing_after(GET);
        let frames = "\u{81}\u{5}hello GET / HTTP/1.1\r\n\r\n";
        let (out, flow) = pushed(&mut framing, format!("{upgrade}{frames}").as_bytes(), 3);
        assert_eq!(flow, Flow::Open);
        let head = upstream("/ws", "upgrade: websocket\r\nconnection: upgrade\r\n");
        assert_eq!(out, format!("{head}{frames}"));
        assert!(!framing.is_between_requests());
    }
}
