//! Optional API keys: a request proves it may use the server with `Authorization: Bearer <key>`.
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

    /// Accept a request carrying `Authorization: Bearer <one of the keys>`; otherwise the 401
    /// error to answer with (its message never quotes what the client sent).
    pub fn check(&self, request: &Request) -> Result<(), HttpError> {
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
