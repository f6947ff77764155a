//! Which requests need an API key: all of them when keys are configured, except the health
//! probes.
//!
//! The check runs in the request parser as soon as a head is complete (`HeadCheck`), so a
//! request without a valid key gets its 401 before its body is read, before `100 Continue`,
//! before a WebSocket upgrade and before any sandbox is touched.

use crate::http::api_keys::ApiKeys;
use crate::http::request::HeadCheck;

/// Paths answered without a key, whatever the method: Cloud Run's startup and liveness probes
/// send no credentials, and these answers reveal nothing but that the server is up.
pub const OPEN_PATHS: [&str; 2] = ["/status", "/readyz"];

/// The parser hook that enforces `keys`, or `None` when no key is configured (every request is
/// served as before).
pub fn head_check(keys: Option<&ApiKeys>) -> Option<HeadCheck> {
    let keys = keys?.clone();
    Some(HeadCheck::new(move |request| {
        if OPEN_PATHS.contains(&request.path.as_str()) {
            return Ok(());
        }
        keys.check(request)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{Limits, Progress, RequestParser};

    fn answer(check: Option<HeadCheck>, head: &str) -> Result<u16, u16> {
        let mut parser = RequestParser::new(Limits::default());
        if let Some(check) = check {
            parser = parser.with_head_check(check);
        }
        parser.push(head.as_bytes()).map_err(|error| error.status)?;
        match parser.poll() {
            Ok(Progress::Done(_)) => Ok(200),
            Ok(other) => panic!("incomplete: {other:?}"),
            Err(error) => Err(error.status),
        }
    }

    #[test]
    fn probes_stay_open_and_everything_else_needs_the_key() {
        let keys = ApiKeys::from_comma_list("the-key", "test").unwrap();
        let check = || head_check(Some(&keys));
        for open in [
            "GET /status HTTP/1.1\r\n\r\n",
            "HEAD /status HTTP/1.1\r\n\r\n",
            "GET /readyz HTTP/1.1\r\n\r\n",
            "GET http://host/status?x=1 HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(answer(check(), open), Ok(200), "{open}");
        }
        for closed in [
            "GET /metrics HTTP/1.1\r\n\r\n",
            "GET /snapshots HTTP/1.1\r\n\r\n",
            "GET /create HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /attach/abc?sandbox_token=t HTTP/1.1\r\n\r\n",
            "GET /status/x HTTP/1.1\r\n\r\n",
            "GET /nowhere HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nAuthorization: Bearer not-the-key\r\n\r\n",
        ] {
            assert_eq!(answer(check(), closed), Err(401), "{closed}");
        }
        assert_eq!(
            answer(
                check(),
                "GET /metrics HTTP/1.1\r\nAuthorization: Bearer the-key\r\n\r\n"
            ),
            Ok(200)
        );
    }

    #[test]
    fn without_keys_nothing_is_checked() {
        assert!(head_check(None).is_none());
        assert_eq!(answer(None, "GET /metrics HTTP/1.1\r\n\r\n"), Ok(200));
    }
}
