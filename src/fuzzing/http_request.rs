//! The HTTP request parser and its chunked decoder, fed the way a socket feeds them.
//!
//! Input layout: `[mode] [n] [n piece sizes] [stream...]`.
//! - `mode` bits 0-1 pick the [`Limits`] (the server's defaults or small ones, so that every
//!   limit is reachable in a short input); bit 2 puts a chunked `POST` head in front of the
//!   stream, so that the mutations go to the chunked decoder; bit 3 streams the bodies of `PUT`
//!   requests (as the server does for file uploads) and makes that head a `PUT`.
//! - the stream is pushed in pieces of the given sizes (1 to 256 bytes, the rest at once).
//!
//! Checked: no panic; completed requests respect the limits; errors carry a status the server
//! knows and a short message; an error is sticky; memory held stays bounded; and the outcome
//! does not depend on how the bytes were split (the same stream pushed at once gives the same
//! requests, and is not rejected by one and complete for the other).

use crate::http::request::{HttpError, Limits, Progress, Request, RequestParser, StreamCheck};

const CHUNKED_HEAD: &[u8] =
    b"POST /execute?language=bash HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
const CHUNKED_PUT_HEAD: &[u8] =
    b"PUT /sandboxes/x/files?path=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Statuses the parser may answer with.
const STATUSES: [u16; 6] = [400, 411, 413, 431, 501, 505];

/// Error messages quote at most a few dozen characters of the input.
const MAX_MESSAGE_BYTES: usize = 512;

fn limits(mode: u8) -> Limits {
    match mode & 3 {
        0 => Limits::default(),
        1 => Limits {
            max_header_bytes: 256,
            max_headers: 8,
            max_body_bytes: 64,
        },
        2 => Limits {
            max_header_bytes: 64,
            max_headers: 1,
            max_body_bytes: 0,
        },
        _ => Limits {
            max_header_bytes: 1024,
            max_headers: 4,
            max_body_bytes: 16,
        },
    }
}

pub fn run(data: &[u8]) {
    let [mode, count, rest @ ..] = data else {
        return;
    };
    let (sizes, stream) = rest.split_at(usize::from(*count % 32).min(rest.len()));
    let limits = limits(*mode);
    let mut input = Vec::with_capacity(stream.len() + CHUNKED_HEAD.len());
    let streamed = mode & 8 != 0;
    if mode & 4 != 0 {
        input.extend_from_slice(if streamed {
            CHUNKED_PUT_HEAD
        } else {
            CHUNKED_HEAD
        });
    }
    input.extend_from_slice(stream);

    let split = feed(limits, streamed, &super::pieces(&input, sizes));
    let whole = feed(limits, streamed, &[&input]);
    assert_eq!(
        split.requests, whole.requests,
        "requests depend on how the stream was split"
    );
    // Garbage is rejected as soon as it is seen, and what is seen early depends on the split
    // (heads are re-parsed only on new lines, or while short): so one feed may still be
    // waiting where the other already failed. But never may one call the stream fine and
    // complete (idle between requests) where the other rejects it.
    if split.error.is_some() != whole.error.is_some() {
        assert!(
            !split.idle && !whole.idle,
            "the verdict depends on how the stream was split: {:?} vs {:?}",
            split.error,
            whole.error
        );
    }
}

struct Outcome {
    requests: Vec<Request>,
    error: Option<HttpError>,
    /// Nothing partial held at the end: the stream was complete requests only.
    idle: bool,
}

fn feed(limits: Limits, streamed: bool, pieces: &[&[u8]]) -> Outcome {
    let mut parser = RequestParser::new(limits);
    if streamed {
        parser = parser.with_streamed_bodies(StreamCheck::new(|request| request.method == "PUT"));
    }
    // A streamed request being received: its head, and its body so far.
    let mut streaming: Option<Request> = None;
    let mut outcome = Outcome {
        requests: Vec::new(),
        error: None,
        idle: true,
    };
    let bound = 2 * (limits.max_header_bytes + limits.max_body_bytes) + 128 * 1024;
    for piece in pieces {
        let pushed = parser.push(piece);
        loop {
            match parser.poll() {
                Ok(Progress::NeedMore) => break,
                Ok(Progress::SendContinue) => {}
                Ok(Progress::Done(request)) => {
                    assert!(streaming.is_none(), "a request inside a streamed body");
                    check_request(&request, &limits);
                    outcome.requests.push(request);
                }
                Ok(Progress::Head(head)) => {
                    assert!(streamed && head.method == "PUT" && head.body.is_empty());
                    assert!(
                        streaming.replace(head).is_none(),
                        "two heads without an end"
                    );
                }
                Ok(Progress::Body(piece)) => {
                    assert!(!piece.is_empty(), "an empty piece of body");
                    let request = streaming.as_mut().expect("body without a head");
                    request.body.extend_from_slice(&piece);
                }
                Ok(Progress::BodyEnd) => {
                    let request = streaming.take().expect("end without a head");
                    // Streamed bodies are not bounded by max_body_bytes.
                    let unbounded = Limits {
                        max_body_bytes: usize::MAX,
                        ..limits
                    };
                    check_request(&request, &unbounded);
                    outcome.requests.push(request);
                }
                Err(error) => {
                    outcome.error = Some(error);
                    break;
                }
            }
        }
        assert!(
            parser.buffered_len() <= bound,
            "{} bytes held",
            parser.buffered_len()
        );
        if let Err(error) = pushed {
            outcome.error.get_or_insert(error);
        }
        if let Some(error) = &outcome.error {
            check_error(error);
            assert_eq!(parser.poll().as_ref(), Err(error), "errors must be sticky");
            assert!(parser.push(b"GET / HTTP/1.1\r\n\r\n").is_err());
            assert!(!parser.is_idle());
            outcome.idle = false;
            return outcome;
        }
    }
    outcome.idle = parser.is_idle();
    outcome
}

fn check_request(request: &Request, limits: &Limits) {
    assert!(request.body.len() <= limits.max_body_bytes);
    assert!(request.headers.len() <= limits.max_headers);
    assert!(request.version_minor <= 1);
    assert!(!request.method.is_empty());
    assert!(request
        .headers
        .iter()
        .all(|(name, _)| !name.bytes().any(|b| b.is_ascii_uppercase())));
}

fn check_error(error: &HttpError) {
    assert!(STATUSES.contains(&error.status), "status {}", error.status);
    assert!(!error.message.is_empty());
    assert!(
        error.message.len() <= MAX_MESSAGE_BYTES,
        "{}-byte message",
        error.message.len()
    );
}
