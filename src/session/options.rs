//! What a client asks for in its messages, validated strictly: a value of the wrong type or an
//! absurd number is an error that names the key and quotes the value, never a silent default
//! (`"enable_network": "yes"` used to mean "no"). Unknown keys are ignored: the protocol is
//! additive, and original clients send only the keys they know.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

/// The largest `idle_timeout` a client may send, in seconds (about 31 years). Values up to it
/// are capped by the server's `SANDBOX_MAX_IDLE_TIMEOUT_SECS`; beyond it the number is a
/// mistake or an attack (`1e20` once panicked the server), so it is refused.
pub const MAX_IDLE_TIMEOUT_SECS: f64 = 1e9;

/// The init object of `/create`, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InitOptions {
    /// `None`: the server's default; `Some(ZERO)`: never (capped by the server's maximum).
    pub idle_timeout: Option<Duration>,
    pub checkpoint: bool,
    pub auto_checkpoint: bool,
    pub network: bool,
    pub snapshot: Option<String>,
    /// `enable_sandbox_handoff`: another instance may take the sandbox over (implies
    /// checkpointing).
    pub handoff: bool,
    /// `labels` (addition), listed by `GET /sandboxes`.
    pub labels: BTreeMap<String, String>,
}

/// Labels a sandbox may carry at most, and their sizes: they are kept with every checkpoint
/// and listed, so they stay small.
pub const MAX_LABELS: usize = 16;
pub const MAX_LABEL_KEY_CHARS: usize = 63;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// Parses and checks the init object. The error names the offending key.
pub fn parse_init(text: &str) -> Result<InitOptions, String> {
    let Ok(Value::Object(init)) = serde_json::from_str::<Value>(text) else {
        return Err("the first message must be the init JSON object".into());
    };
    let handoff = flag(&init, "enable_sandbox_handoff")?;
    let snapshot = match init.get("filesystem_snapshot_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name.clone()),
        Some(other) => {
            return Err(format!(
                "filesystem_snapshot_name must be a string or null, got {}",
                quoted(other)
            ))
        }
    };
    let idle_timeout = match init.get("idle_timeout") {
        None => None,
        Some(value) => idle_timeout(value)?,
    };
    let auto_checkpoint = flag(&init, "enable_idle_timeout_auto_checkpoint")?;
    Ok(InitOptions {
        idle_timeout,
        // A handoff and an idle checkpoint are checkpoints.
        checkpoint: flag(&init, "enable_checkpoint")? || auto_checkpoint || handoff,
        auto_checkpoint,
        network: flag(&init, "enable_network")?,
        snapshot,
        handoff,
        labels: labels(init.get("labels"))?,
    })
}

/// An `idle_timeout` value (of the init or of `set_idle_timeout`): `null` is the server's
/// default (`None`), 0 "never" (capped by the server's maximum); anything else must be a
/// number of seconds up to [`MAX_IDLE_TIMEOUT_SECS`].
pub fn idle_timeout(value: &Value) -> Result<Option<Duration>, String> {
    if value.is_null() {
        return Ok(None);
    }
    value
        .as_f64()
        .and_then(|seconds| duration(seconds, true, MAX_IDLE_TIMEOUT_SECS))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "idle_timeout must be a number of seconds from 0 (never) to {MAX_IDLE_TIMEOUT_SECS:.0} or null, got {}",
                quoted(value)
            )
        })
}

/// `labels`: an object of at most [`MAX_LABELS`] strings, keys of 1 to 63 characters from
/// `A-Z a-z 0-9 . _ -`, values of at most 256 bytes without control characters.
pub fn labels(value: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    let object = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(object)) => object,
        Some(other) => {
            return Err(format!(
                "labels must be an object of strings, got {}",
                quoted(other)
            ))
        }
    };
    if object.len() > MAX_LABELS {
        return Err(format!(
            "labels: at most {MAX_LABELS} labels, got {}",
            object.len()
        ));
    }
    let mut labels = BTreeMap::new();
    for (key, value) in object {
        let key_ok = (1..=MAX_LABEL_KEY_CHARS).contains(&key.chars().count())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !key_ok {
            return Err(format!(
                "labels: key {} must be 1 to {MAX_LABEL_KEY_CHARS} characters from A-Z a-z 0-9 . _ -",
                quoted(&Value::String(key.clone()))
            ));
        }
        let text = match value {
            Value::String(text)
                if text.len() <= MAX_LABEL_VALUE_BYTES && !text.chars().any(char::is_control) =>
            {
                text
            }
            other => {
                return Err(format!(
                    "labels: the value of {key:?} must be a string of at most {MAX_LABEL_VALUE_BYTES} bytes without control characters, got {}",
                    quoted(other)
                ))
            }
        };
        labels.insert(key.clone(), text.clone());
    }
    Ok(labels)
}

/// A boolean key: absent or `null` is false; anything but a boolean is an error naming it.
pub fn flag(message: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match message.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(value)) => Ok(*value),
        Some(other) => Err(format!(
            "{key} must be true or false, got {}",
            quoted(other)
        )),
    }
}

/// A key naming one of `allowed` (the first is the default, for absent or `null`).
pub fn choice<'a>(
    message: &Map<String, Value>,
    key: &str,
    allowed: &[&'a str],
) -> Result<&'a str, String> {
    match message.get(key) {
        None | Some(Value::Null) => Ok(allowed.first().copied().unwrap_or_default()),
        Some(value) => one_of(key, value, allowed),
    }
}

/// `value` of option `key`, if it is one of `allowed`; else an error naming them.
pub fn one_of<'a>(key: &str, value: &Value, allowed: &[&'a str]) -> Result<&'a str, String> {
    value
        .as_str()
        .and_then(|text| allowed.iter().find(|name| **name == text).copied())
        .ok_or_else(|| {
            let names: Vec<String> = allowed.iter().map(|name| format!("{name:?}")).collect();
            format!(
                "{key} must be {}, got {}",
                names.join(" or "),
                quoted(value)
            )
        })
}

/// Seconds as a `Duration`, if finite and in range: above 0 (or from 0 with `zero_allowed`)
/// and at most `max_secs`. Never panics, unlike `Duration::from_secs_f64`.
pub fn duration(seconds: f64, zero_allowed: bool, max_secs: f64) -> Option<Duration> {
    let above_minimum = if zero_allowed {
        seconds >= 0.0
    } else {
        seconds > 0.0
    };
    if !seconds.is_finite() || !above_minimum || seconds > max_secs {
        return None;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

/// A client's value quoted in an error message, shortened so a hostile value cannot make the
/// message (or the log line) large.
pub fn quoted(value: &Value) -> String {
    const SHOWN: usize = 64;
    let text = value.to_string();
    let mut chars = text.chars();
    let mut shown: String = chars.by_ref().take(SHOWN).collect();
    if chars.next().is_some() {
        shown.push_str("...");
    }
    shown
}

/// The snapshot name rule (`crate::ids`), with its error as the client reads it.
pub fn validate_snapshot_name(name: &str) -> Result<(), String> {
    crate::ids::validate_snapshot_name(name).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(text: &str) -> Result<InitOptions, String> {
        parse_init(text)
    }

    #[test]
    fn sane_inits_are_accepted_and_unknown_keys_ignored() {
        assert_eq!(init("{}"), Ok(InitOptions::default()));
        let original = r#"{"idle_timeout": 300, "enable_checkpoint": false,
            "enable_idle_timeout_auto_checkpoint": false, "enable_sandbox_handoff": false,
            "filesystem_snapshot_name": null, "a_future_key": [1, {"x": "y"}]}"#;
        assert_eq!(
            init(original),
            Ok(InitOptions {
                idle_timeout: Some(Duration::from_secs(300)),
                ..InitOptions::default()
            })
        );
        let all = init(
            r#"{"idle_timeout": 0, "enable_idle_timeout_auto_checkpoint": true,
                "enable_network": true, "filesystem_snapshot_name": "snap"}"#,
        )
        .unwrap();
        assert_eq!(all.idle_timeout, Some(Duration::ZERO));
        assert!(all.checkpoint && all.auto_checkpoint && all.network);
        assert_eq!(all.snapshot.as_deref(), Some("snap"));
        assert_eq!(
            init(r#"{"idle_timeout": 1e9, "enable_network": null}"#)
                .unwrap()
                .idle_timeout,
            Some(Duration::from_secs(1_000_000_000))
        );
        assert_eq!(
            init(r#"{"idle_timeout": 2.5}"#).unwrap().idle_timeout,
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn absurd_idle_timeouts_are_errors_naming_the_key() {
        // 1e20 (>= 2^64 s) made Duration::from_secs_f64 panic and took the server down.
        for value in [
            "1e20",
            "1e300",
            "18446744073709551616",
            "1000000001",
            "-1",
            "-0.5",
            "\"300\"",
            "true",
            "[]",
            "{}",
        ] {
            let error = init(&format!(r#"{{"idle_timeout": {value}}}"#)).unwrap_err();
            assert!(
                error.starts_with("idle_timeout must be a number of seconds"),
                "{value}: {error}"
            );
            let parsed: Value = serde_json::from_str(value).unwrap();
            assert!(error.ends_with(&quoted(&parsed)), "{value}: {error}");
        }
    }

    #[test]
    fn non_boolean_flags_are_errors_naming_the_key() {
        for key in [
            "enable_checkpoint",
            "enable_idle_timeout_auto_checkpoint",
            "enable_sandbox_handoff",
            "enable_network",
        ] {
            for value in [r#""yes""#, "1", "0", r#""false""#, "{}"] {
                let error = init(&format!(r#"{{"{key}": {value}}}"#)).unwrap_err();
                assert_eq!(error, format!("{key} must be true or false, got {value}"));
            }
        }
    }

    #[test]
    fn handoff_implies_checkpointing() {
        let init = init(r#"{"enable_sandbox_handoff": true}"#).unwrap();
        assert!(init.handoff && init.checkpoint && !init.auto_checkpoint);
    }

    #[test]
    fn labels_are_small_maps_of_strings() {
        let parsed = init(r#"{"labels": {"team": "search", "run.id": "a-1_b", "empty": ""}}"#)
            .unwrap()
            .labels;
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed["team"], "search");
        assert_eq!(init(r#"{"labels": null}"#).unwrap().labels.len(), 0);
        let many: Map<String, Value> = (0..17)
            .map(|n| (format!("k{n}"), Value::String("v".into())))
            .collect();
        let too_many = serde_json::json!({ "labels": many }).to_string();
        let long_key = "k".repeat(64);
        let long_value = "v".repeat(257);
        for (labels, expected) in [
            (
                r#""team=search""#.to_string(),
                r#"labels must be an object of strings, got "team=search""#.to_string(),
            ),
            (
                r#"["a"]"#.into(),
                r#"labels must be an object of strings, got ["a"]"#.into(),
            ),
            (
                r#"{"a b": "c"}"#.into(),
                r#"labels: key "a b" must be 1 to 63"#.into(),
            ),
            (r#"{"": "c"}"#.into(), r#"labels: key "" must be"#.into()),
            (format!(r#"{{"{long_key}": "c"}}"#), "labels: key".into()),
            (
                r#"{"n": 5}"#.into(),
                r#"labels: the value of "n" must be a string of at most 256 bytes"#.into(),
            ),
            (
                format!(r#"{{"v": "{long_value}"}}"#),
                r#"labels: the value of "v""#.into(),
            ),
            (
                r#"{"v": "line\nbreak"}"#.into(),
                r#"labels: the value of "v""#.into(),
            ),
        ] {
            let error = init(&format!(r#"{{"labels": {labels}}}"#)).unwrap_err();
            assert!(error.starts_with(&expected), "{labels}: {error}");
        }
        let error = init(&too_many).unwrap_err();
        assert_eq!(error, "labels: at most 16 labels, got 17");
    }

    #[test]
    fn snapshot_names_must_be_strings() {
        for value in ["5", "true", r#"["a"]"#, r#"{"name":"a"}"#] {
            let error = init(&format!(r#"{{"filesystem_snapshot_name": {value}}}"#)).unwrap_err();
            assert_eq!(
                error,
                format!("filesystem_snapshot_name must be a string or null, got {value}")
            );
        }
    }

    #[test]
    fn the_init_must_be_an_object() {
        for text in ["", "not json", "[]", "42", "null", r#""{}""#] {
            assert_eq!(
                init(text).unwrap_err(),
                "the first message must be the init JSON object"
            );
        }
    }

    #[test]
    fn durations_never_panic() {
        for seconds in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            1e20,
            -1.0,
            -0.0 - 1e-300,
        ] {
            assert_eq!(duration(seconds, true, f64::MAX), None, "{seconds}");
        }
        assert_eq!(duration(0.0, true, 10.0), Some(Duration::ZERO));
        assert_eq!(duration(0.0, false, 10.0), None);
        assert_eq!(duration(10.0, false, 10.0), Some(Duration::from_secs(10)));
        assert_eq!(duration(10.5, false, 10.0), None);
        // The largest f64 below 2^64 still fits a Duration.
        assert!(duration(1.8e19, true, f64::MAX).is_some());
    }

    #[test]
    fn choices_name_the_allowed_values() {
        let message: Map<String, Value> =
            serde_json::from_str(r#"{"a": "base64", "b": "hex", "c": null, "d": 7}"#).unwrap();
        let allowed = ["text", "base64"];
        assert_eq!(choice(&message, "a", &allowed), Ok("base64"));
        assert_eq!(choice(&message, "c", &allowed), Ok("text"));
        assert_eq!(choice(&message, "missing", &allowed), Ok("text"));
        assert_eq!(
            choice(&message, "b", &allowed).unwrap_err(),
            r#"b must be "text" or "base64", got "hex""#
        );
        assert_eq!(
            choice(&message, "d", &allowed).unwrap_err(),
            r#"d must be "text" or "base64", got 7"#
        );
    }

    #[test]
    fn quoted_values_are_bounded() {
        let long = Value::String("é".repeat(1000));
        let shown = quoted(&long);
        assert!(shown.chars().count() <= 67, "{shown}");
        assert!(shown.ends_with("..."));
    }
}
