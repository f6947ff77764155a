//! The framing of the requests on a kept-alive path-form port connection
//! (`ports::requests::RequestFraming`), on anything a client sends after its first request.
//!
//! Input: the first byte is how many of the next bytes are piece sizes (0 to 15); the rest is
//! what the client sends after a first `GET` for the link (see `super::pieces`). Checked: no
//! panic; the same bytes pass on the same bytes whole and in pieces; the verdict may differ
//! only as the request parser's does (a bad head is seen as soon as it is parsed, and heads
//! are parsed on new lines or while short: one feed may still wait in a head where the other
//! refused it, or refuse it for another reason), never "fine and complete" for one and
//! refused or left for the other; after a leave or a refusal nothing more is passed on; what is passed on is never more than twice what
//! came in plus a bound per request head (a rewrite adds `X-Forwarded-*`, whose host repeats
//! the request's own).

use crate::http::request::{Limits, Progress, RelayCheck, Request, RequestParser};
use crate::ports::requests::{Flow, RequestFraming};

const CAPABILITY: &str = "0123456789abcdef0123456789abcdef";

/// Besides the host it repeats, at most this much more goes out per request head (the
/// `X-Forwarded-*` names, prefix and scheme a rewrite adds).
const REWRITE_GROWTH: usize = 512;

pub fn run(data: &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 16).min(rest.len());
    let (sizes, input) = rest.split_at(count);

    let (whole, whole_flow, whole_idle) = frame(&[input]);
    let (split, split_flow, split_idle) = frame(&super::pieces(input, sizes));
    assert_eq!(whole, split, "pieces changed what is passed on");
    let agree = match (&whole_flow, &split_flow) {
        (Flow::Refuse(_), Flow::Refuse(_)) => true,
        (Flow::Open, Flow::Refuse(_)) => !whole_idle,
        (Flow::Refuse(_), Flow::Open) => !split_idle,
        (whole, split) => whole == split,
    };
    assert!(
        agree,
        "pieces changed the verdict: {whole_flow:?} vs {split_flow:?}"
    );

    let heads = memchr::memmem::find_iter(input, b"\r\n\r\n").count() + 1;
    assert!(
        whole.len() <= 2 * input.len() + heads * REWRITE_GROWTH,
        "{} bytes out of {} in",
        whole.len(),
        input.len()
    );
}

/// Push `pieces` one after the other, as reads of the socket would; what went out, the first
/// flow that was not `Open` (or `Open`), and whether it ended between requests.
fn frame(pieces: &[&[u8]]) -> (Vec<u8>, Flow, bool) {
    let mut framing = RequestFraming::after(&first(), CAPABILITY, Limits::default(), None, false)
        .expect("the first request is well framed");
    let mut out = Vec::new();
    for piece in pieces {
        let flow = framing.push(piece, &mut out);
        if flow != Flow::Open {
            let before = out.len();
            assert_eq!(
                framing.push(b"GET / HTTP/1.1\r\n\r\n", &mut out),
                Flow::Leave
            );
            assert_eq!(out.len(), before, "passed on after the end");
            return (out, flow, false);
        }
    }
    let idle = framing.is_between_requests();
    (out, Flow::Open, idle)
}

fn first() -> Request {
    let head = format!("GET /ports/{CAPABILITY}/ HTTP/1.1\r\nHost: h\r\n\r\n");
    let mut parser =
        RequestParser::new(Limits::default()).with_relay_check(RelayCheck::new(|_| true));
    parser.push(head.as_bytes()).expect("a small head");
    match parser.poll() {
        Ok(Progress::Done(request)) => request,
        other => panic!("the first request: {other:?}"),
    }
}
