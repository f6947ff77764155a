//! Which requests need an API key: all of them when keys are configured, except the health
//! probes and, while it is on, the playground's page and files (they hold no secret: the page
//! asks its user for a key and sends it with every call it makes).
//!
//! The check runs in the request parser as soon as a head is complete (`HeadCheck`), so a
//! request without a valid key gets its 401 before its body is read, before `100 Continue`,
//! before a WebSocket upgrade and before any sandbox is touched.

use super::api::is_playground_path;
use crate::http::api_keys::ApiKeys;
use crate::http::request::HeadCheck;

/// Paths answered without a key, whatever the method: Cloud Run's startup and liveness probes
/// send no credentials, and these answers reveal nothing but that the server is up.
pub const OPEN_PATHS: [&str; 2] = ["/status", "/readyz"];

/// The parser hook that enforces `keys`, or `None` when no key is configured (every request is
/// served as before). `playground`: whether the playground's paths answer without a key (a
/// WebSocket upgrade never does: `/` is not one of its endpoints, and every other is checked).
///
/// Requests for an exposed port (`crate::ports::route`, with the ports' `domain`) carry their
/// own credential, the capability in the URL: they need no key unless `ports_need_key`
/// (`SANDBOX_PORTS_REQUIRE_KEY`).
pub fn head_check(
    keys: Option<&ApiKeys>,
    playground: bool,
    ports_domain: Option<String>,
    ports_need_key: bool,
) -> Option<HeadCheck> {
    let keys = keys?.clone();
    Some(HeadCheck::new(move |request| {
        let path = request.path.as_str();
        if OPEN_PATHS.contains(&path) || (playground && is_playground_path(path)) {
            return Ok(());
        }
        if !ports_need_key && crate::ports::route(request, ports_domain.as_deref()).is_some() {
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
        let check = || head_check(Some(&keys), false, None, false);
        for open in [
            "GET /status HTTP/1.1\r\n\r\n",
            "HEAD /status HTTP/1.1\r\n\r\n",
            // A port's URL carries its own credential (the capability).
            "GET /ports/0123456789abcdef0123456789abcdef/ HTTP/1.1\r\n\r\n",
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
            // The playground is off here: its paths are like any other.
            "GET / HTTP/1.1\r\n\r\n",
            "GET /playground/app.js HTTP/1.1\r\n\r\n",
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
    fn the_playground_page_is_open_while_it_is_on() {
        let keys = ApiKeys::from_comma_list("the-key", "test").unwrap();
        let check = || head_check(Some(&keys), true, None, false);
        for open in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET /playground HTTP/1.1\r\n\r\n",
            "HEAD /playground/app.js HTTP/1.1\r\n\r\n",
            "GET /playground/unknown HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(answer(check(), open), Ok(200), "{open}");
        }
        for closed in [
            "GET /metrics HTTP/1.1\r\n\r\n",
            "GET /create HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /playgroundx HTTP/1.1\r\n\r\n",
            "POST /execute?language=bash HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(answer(check(), closed), Err(401), "{closed}");
        }
    }

    #[test]
    fn without_keys_nothing_is_checked() {
        assert!(head_check(None, true, None, false).is_none());
        assert_eq!(answer(None, "GET /metrics HTTP/1.1\r\n\r\n"), Ok(200));
    }

    #[test]
    fn ports_need_the_key_only_when_the_operator_says_so() {
        let keys = ApiKeys::from_comma_list("the-key", "test").unwrap();
        let port = "GET /ports/0123456789abcdef0123456789abcdef/x HTTP/1.1\r\n\r\n";
        let host =
            "GET /x HTTP/1.1\r\nHost: 8000-0123456789abcdef0123456789abcdef.p.example\r\n\r\n";
        let open = || head_check(Some(&keys), false, Some("p.example".into()), false);
        assert_eq!(answer(open(), port), Ok(200));
        assert_eq!(answer(open(), host), Ok(200));
        let closed = || head_check(Some(&keys), false, Some("p.example".into()), true);
        assert_eq!(answer(closed(), port), Err(401));
        assert_eq!(answer(closed(), host), Err(401));
        let with_key = "GET /ports/0123456789abcdef0123456789abcdef/x HTTP/1.1\r\nAuthorization: Bearer the-key\r\n\r\n";
        assert_eq!(answer(closed(), with_key), Ok(200));
    }
}
