//! Query-string and path decoding.
//!
//! Decoding never fails on query strings: clients send all sorts of sloppy encodings, and a
//! lossy value lets the handler report a precise "bad language" error instead of a generic 400.
//! Paths are stricter (`None` on invalid UTF-8) because routing on a lossily mangled path could
//! match a route the client never asked for.

/// Parses an `application/x-www-form-urlencoded` query (`a=1&b=x+y`) into ordered pairs.
///
/// `+` becomes a space, `%XX` is decoded, malformed escapes are kept literally, and invalid
/// UTF-8 is replaced with U+FFFD. Empty segments (`a=1&&b=2`) are skipped; a segment without
/// `=` yields an empty value.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            (form_decode(key), form_decode(value))
        })
        .collect()
}

/// Returns the value of the first pair named `name`, if any.
pub fn query_param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// The value of parameter `name` if it is given at most once. A repeated parameter is an error
/// naming it: which of two values was meant is a guess, and guessing differently from a proxy
/// in front is how checks get bypassed.
pub fn single_param<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, String> {
    if pairs.iter().filter(|(key, _)| key == name).count() > 1 {
        return Err(format!("query parameter {name:?} is given more than once"));
    }
    Ok(query_param(pairs, name))
}

/// Percent-decodes a path (`+` stays `+`); `None` if the decoded bytes are not UTF-8.
pub fn percent_decode_path(raw: &str) -> Option<String> {
    String::from_utf8(percent_decode_bytes(raw.as_bytes(), false)).ok()
}

fn form_decode(raw: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(raw.as_bytes(), true)).into_owned()
}

fn percent_decode_bytes(raw: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&byte, tail)) = rest.split_first() {
        match byte {
            b'%' => match tail {
                [hi, lo, after @ ..] => match (hex_value(*hi), hex_value(*lo)) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        rest = after;
                        continue;
                    }
                    _ => out.push(b'%'),
                },
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            other => out.push(other),
        }
        rest = tail;
    }
    out
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_pairs_in_order() {
        assert_eq!(
            parse_query("language=python&timeout=10&flag"),
            pairs(&[("language", "python"), ("timeout", "10"), ("flag", "")])
        );
        assert!(parse_query("").is_empty());
        assert_eq!(parse_query("&&a=1&"), pairs(&[("a", "1")]));
        assert_eq!(parse_query("a=b=c"), pairs(&[("a", "b=c")]));
    }

    #[test]
    fn decodes_form_encoding() {
        assert_eq!(
            parse_query("q=a+b%20c%2Bd&k%61y=%e2%82%AC"),
            pairs(&[("q", "a b c+d"), ("kay", "\u{20ac}")])
        );
    }

    #[test]
    fn keeps_invalid_escapes_and_replaces_bad_utf8() {
        assert_eq!(
            parse_query("a=%&b=%4&c=%zz1&d=100%"),
            pairs(&[("a", "%"), ("b", "%4"), ("c", "%zz1"), ("d", "100%")])
        );
        assert_eq!(parse_query("x=%ff"), pairs(&[("x", "\u{fffd}")]));
    }

    #[test]
    fn query_param_returns_first_match() {
        let list = parse_query("a=1&b=2&a=3");
        assert_eq!(query_param(&list, "a"), Some("1"));
        assert_eq!(query_param(&list, "b"), Some("2"));
        assert_eq!(query_param(&list, "c"), None);
    }

    #[test]
    fn single_params_refuse_repetition() {
        let list = parse_query("language=python&timeout=5&language=bash&x=1&x=1");
        assert_eq!(single_param(&list, "timeout"), Ok(Some("5")));
        assert_eq!(single_param(&list, "missing"), Ok(None));
        assert_eq!(
            single_param(&list, "language"),
            Err("query parameter \"language\" is given more than once".into())
        );
        // Even the same value twice: one meaning per name.
        assert!(single_param(&list, "x").is_err());
        // Names are compared decoded: `%6Canguage` is `language`.
        let list = parse_query("language=python&%6Canguage=bash");
        assert!(single_param(&list, "language").is_err());
    }

    #[test]
    fn path_decoding() {
        assert_eq!(percent_decode_path("/a%20b+c").as_deref(), Some("/a b+c"));
        assert_eq!(percent_decode_path("/%zz%").as_deref(), Some("/%zz%"));
        assert_eq!(percent_decode_path("/%C3%A9").as_deref(), Some("/\u{e9}"));
        assert_eq!(percent_decode_path("/%ff"), None);
    }
}
