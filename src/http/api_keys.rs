//! Optional API keys: a request proves it may use the server with `Authorization: Bearer <key>`.
//! A browser's `WebSocket` cannot send that header, so a WebSocket upgrade without it may carry
//! the key as a subprotocol instead: `Sec-WebSocket-Protocol: api-key.<base64url of the key>`
//! (see docs/security.md for why a subprotocol and not the query string).
//!
//! Keys are kept only as SHA-256 digests, and a presented key is compared by its digest against
//! every configured digest without stopping at the first difference or the first match. The
//! time a check takes therefore depends on neither the key's length nor how much of it is
//! right, and the keys themselves are not held in memory after start (nor ever printed: the
//! `Debug` form shows the count only, and every error names a key by its position).

use sha2::{Digest, Sha256};

use super::request::{HttpError, Request};

/// The configured keys (at least one).
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

impl ApiKeys {
    /// Keys from a comma-separated list (`SANDBOX_API_KEYS`). Spaces around a key are ignored;
    /// an empty entry (a stray comma) is an error, not an ignored key. `source` names the list
    /// in errors.
    pub fn from_comma_list(text: &str, source: &str) -> Result<ApiKeys, String> {
        let entries: Vec<&str> = text.split(',').map(str::trim).collect();
        let total = entries.len();
        let mut keys = ApiKeys {
            digests: Vec::new(),
        };
        for (index, key) in entries.into_iter().enumerate() {
            if key.is_empty() {
                return Err(format!(
                    "{source}: key {} of {total} is empty (a stray comma?); \
                     list keys as KEY1,KEY2",
                    index + 1
                ));
            }
            keys.add(key, &format!("{source}: key {} of {total}", index + 1))?;
        }
        Ok(keys)
    }

    /// Keys from a file's text (`SANDBOX_API_KEYS_FILE`): one per line, blank lines skipped
    /// (a mounted secret often ends with a newline). `source` names the file in errors.
    pub fn from_lines(text: &str, source: &str) -> Result<ApiKeys, String> {
        let mut keys = ApiKeys {
            digests: Vec::new(),
        };
        for (index, line) in text.lines().enumerate() {
            let key = line.trim();
            if !key.is_empty() {
                keys.add(key, &format!("{source}: the key on line {}", index + 1))?;
            }
        }
        if keys.digests.is_empty() {
            return Err(format!("{source}: holds no key (one key per line)"));
        }
        Ok(keys)
    }

    /// Both sets: a request may present any key of either.
    pub fn merge(mut self, other: ApiKeys) -> ApiKeys {
        self.digests.extend(other.digests);
        self
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    fn add(&mut self, key: &str, what: &str) -> Result<(), String> {
        // What a client can send in a header without quoting: visible ASCII, no spaces.
        if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(format!(
                "{what} has a character that cannot be sent in an HTTP header \
                 (use visible ASCII without spaces)"
            ));
        }
        self.digests.push(digest(key.as_bytes()));
        Ok(())
    }

    /// Whether `presented` is one of the keys, in time independent of where it differs.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut found = 0u8;
        for key in &self.digests {
            found |= u8::from(digests_equal(key, &presented));
        }
        // Keep the compiler from turning the loop into an early exit.
        std::hint::black_box(found) != 0
    }

    /// Accept a request carrying `Authorization: Bearer <one of the keys>`, or a WebSocket
    /// upgrade without that header whose subprotocols hold `api-key.<base64url key>`;
    /// otherwise the 401 error to answer with (its message never quotes what the client sent).
    pub fn check(&self, request: &Request) -> Result<(), HttpError> {
        if request.header("authorization").is_none() && request.is_websocket_upgrade() {
            if let Some(key) = key_from_subprotocols(request)? {
                return if self.accepts(&key) {
                    Ok(())
                } else {
                    Err(HttpError::new(
                        401,
                        "the api key in the api-key.* WebSocket subprotocol is not valid",
                    ))
                };
            }
        }
        let Some(value) = request.header("authorization") else {
            return Err(HttpError::new(
                401,
                "missing api key: send the header `Authorization: Bearer <key>`",
            ));
        };
        let Some(token) = bearer_token(value) else {
            return Err(HttpError::new(
                401,
                "the authorization header does not use the bearer scheme \
                 (expected `Authorization: Bearer <key>`)",
            ));
        };
        if self.accepts(token.as_bytes()) {
            Ok(())
        } else {
            Err(HttpError::new(
                401,
                "the api key in the authorization header is not valid",
            ))
        }
    }
}

/// What a browser's WebSocket offers in `Sec-WebSocket-Protocol` to carry its key.
pub const KEY_SUBPROTOCOL_PREFIX: &str = "api-key.";

/// The key of the one `api-key.<base64url>` subprotocol offered, if any. Two of them, or one
/// that is not base64url (without padding: `=` cannot appear in a subprotocol), are refused.
fn key_from_subprotocols(request: &Request) -> Result<Option<Vec<u8>>, HttpError> {
    let mut encoded = request
        .list("sec-websocket-protocol")
        .filter_map(|protocol| protocol.strip_prefix(KEY_SUBPROTOCOL_PREFIX));
    let Some(first) = encoded.next() else {
        return Ok(None);
    };
    if encoded.next().is_some() {
        return Err(HttpError::new(
            401,
            "more than one api-key.* WebSocket subprotocol is offered; offer one",
        ));
    }
    base64url_decode(first).map(Some).ok_or_else(|| {
        HttpError::new(
            401,
            "the api-key.* WebSocket subprotocol must be `api-key.` followed by the key in \
             base64url without padding",
        )
    })
}

/// RFC 4648 §5 base64url without padding; `None` for any other character, an impossible
/// length, or nonzero trailing bits (every key has exactly one encoding).
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    fn value(byte: u8) -> Option<u32> {
        Some(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    if text.is_empty() || text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut bits = 0u32;
        for (index, &byte) in chunk.iter().enumerate() {
            bits |= value(byte)? << (18 - 6 * index);
        }
        let bytes = bits.to_be_bytes();
        let whole = chunk.len() * 6 / 8;
        // The bits past the last whole byte must be zero (`QQ` is "A", `QR` is not).
        let spare = &bytes[1 + whole..];
        if spare.iter().any(|&byte| byte != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[1..1 + whole]);
    }
    Some(out)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares every byte: the running time does not depend on where the digests differ.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut difference = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(authorization: Option<&str>) -> Request {
        let mut request = Request {
            method: "GET".into(),
            path: "/metrics".into(),
            target: "/metrics".into(),
            version_minor: 1,
            ..Request::default()
        };
        if let Some(value) = authorization {
            request
                .headers
                .push(("authorization".into(), value.to_string()));
        }
        request
    }

    #[test]
    fn accepts_exactly_the_configured_keys() {
        let keys = ApiKeys::from_comma_list("alpha-key-1, beta-key-2", "SANDBOX_API_KEYS").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts(b"alpha-key-1"));
        assert!(keys.accepts(b"beta-key-2"));
        // A prefix, an extension, a one-bit change, a different case, nothing: all refused.
        for wrong in [
            &b"alpha-key-"[..],
            b"alpha-key-12",
            b"alpha-key-0",
            b"ALPHA-KEY-1",
            b"",
            b" alpha-key-1",
        ] {
            assert!(!keys.accepts(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
    }

    #[test]
    fn digest_comparison_looks_at_every_byte() {
        let a = digest(b"one");
        let mut last_differs = a;
        last_differs[31] ^= 1;
        let mut first_differs = a;
        first_differs[0] ^= 0x80;
        assert!(digests_equal(&a, &a));
        assert!(!digests_equal(&a, &last_differs));
        assert!(!digests_equal(&a, &first_differs));
    }

    #[test]
    fn requests_need_a_bearer_key() {
        let keys = ApiKeys::from_comma_list("s3cret-key", "SANDBOX_API_KEYS").unwrap();
        assert!(keys.check(&request_with(Some("Bearer s3cret-key"))).is_ok());
        assert!(keys
            .check(&request_with(Some("bearer  s3cret-key")))
            .is_ok());
        for (header, expected) in [
            (None, "missing api key"),
            (Some("s3cret-key"), "bearer scheme"),
            (Some("Basic czNjcmV0LWtleQ=="), "bearer scheme"),
            (Some("Bearer"), "bearer scheme"),
            (Some("Bearer wrong-key"), "not valid"),
            (Some("Bearer s3cret-key2"), "not valid"),
        ] {
            let error = keys.check(&request_with(header)).unwrap_err();
            assert_eq!(error.status, 401, "{header:?}");
            assert!(
                error.message.contains(expected),
                "{header:?}: {}",
                error.message
            );
            assert!(!error.message.contains("s3cret"), "{}", error.message);
        }
    }

    fn upgrade_offering(protocols: &[&str]) -> Request {
        let mut request = Request {
            method: "GET".into(),
            path: "/create".into(),
            target: "/create".into(),
            version_minor: 1,
            ..Request::default()
        };
        request.headers.push(("upgrade".into(), "websocket".into()));
        request
            .headers
            .push(("connection".into(), "Upgrade".into()));
        for value in protocols {
            request
                .headers
                .push(("sec-websocket-protocol".into(), value.to_string()));
        }
        request
    }

    #[test]
    fn websocket_upgrades_may_carry_the_key_as_a_subprotocol() {
        let keys = ApiKeys::from_comma_list("s3cret/key+1", "SANDBOX_API_KEYS").unwrap();
        // base64url("s3cret/key+1") = czNjcmV0L2tleSsx
        for accepted in [
            &["cloud-run-sandbox, api-key.czNjcmV0L2tleSsx"][..],
            &["api-key.czNjcmV0L2tleSsx", "cloud-run-sandbox"],
            &["api-key.czNjcmV0L2tleSsx"],
        ] {
            assert!(
                keys.check(&upgrade_offering(accepted)).is_ok(),
                "{accepted:?}"
            );
        }
        for (refused, expected) in [
            (&["cloud-run-sandbox"][..], "missing api key"),
            (&["cloud-run-sandbox, api-key.d3Jvbmc"], "not valid"),
            (
                &["api-key.czNjcmV0L2tleSsx, api-key.czNjcmV0L2tleSsx"],
                "more than one",
            ),
            (&["api-key.czNjcmV0L2tleSsx="], "base64url"),
            (&["api-key.czNjcmV0L2tleSsx+"], "base64url"),
            (&["api-key."], "base64url"),
        ] {
            let error = keys.check(&upgrade_offering(refused)).unwrap_err();
            assert_eq!(error.status, 401);
            assert!(
                error.message.contains(expected),
                "{refused:?}: {}",
                error.message
            );
            assert!(!error.message.contains("czNj"), "{}", error.message);
        }
        // Not an upgrade: the subprotocol header means nothing there.
        let mut plain = upgrade_offering(&["api-key.czNjcmV0L2tleSsx"]);
        plain.headers.retain(|(name, _)| name != "upgrade");
        assert!(keys.check(&plain).is_err());
        // The Authorization header, when present, is what counts.
        let mut both = upgrade_offering(&["api-key.czNjcmV0L2tleSsx"]);
        both.headers
            .push(("authorization".into(), "Bearer wrong".into()));
        assert!(keys.check(&both).is_err());
    }

    #[test]
    fn base64url_has_one_encoding_per_key() {
        assert_eq!(base64url_decode("QQ").as_deref(), Some(&b"A"[..]));
        assert_eq!(base64url_decode("QUI").as_deref(), Some(&b"AB"[..]));
        assert_eq!(base64url_decode("QUJD").as_deref(), Some(&b"ABC"[..]));
        assert_eq!(
            base64url_decode("-_-_").as_deref(),
            Some(&[0xfb, 0xff, 0xbf][..])
        );
        for bad in ["", "Q", "QR", "QUJ", "QUJD=", "QU+D", "QU/D", "QUJDR"] {
            assert_eq!(base64url_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_lists_are_errors_that_do_not_quote_keys() {
        for (text, expected) in [
            ("a-key,,b-key", "key 2 of 3 is empty"),
            ("a-key,", "key 2 of 2 is empty"),
            (" ", "key 1 of 1 is empty"),
            ("a-key,b key", "key 2 of 2 has a character"),
            ("a-key,caf\u{e9}", "key 2 of 2 has a character"),
        ] {
            let error = ApiKeys::from_comma_list(text, "SANDBOX_API_KEYS").unwrap_err();
            assert!(error.starts_with("SANDBOX_API_KEYS: "), "{error}");
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(!error.contains("a-key"), "{error}");
        }
    }

    #[test]
    fn files_hold_one_key_per_line() {
        let keys = ApiKeys::from_lines("first-key\n\n  second-key  \r\n", "/run/keys").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts(b"first-key") && keys.accepts(b"second-key"));
        let error = ApiKeys::from_lines("\n \n", "/run/keys").unwrap_err();
        assert!(error.contains("/run/keys: holds no key"), "{error}");
        let error = ApiKeys::from_lines("ok-key\nbad key\n", "/run/keys").unwrap_err();
        assert!(error.contains("line 2"), "{error}");
        assert!(!error.contains("bad key"), "{error}");
        let merged = keys.merge(ApiKeys::from_comma_list("third-key", "env").unwrap());
        assert!(merged.accepts(b"third-key") && merged.accepts(b"first-key"));
        assert_eq!(format!("{merged:?}"), "ApiKeys(3 keys)");
    }
}
