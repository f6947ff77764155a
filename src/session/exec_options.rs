//! The options of one execution, checked by one set of rules whichever way they arrive: the
//! query string of `POST /execute` or the JSON message of a WebSocket session. Each rule has
//! one error message, which names the option and quotes what was sent.

use std::time::Duration;

use serde_json::{Map, Value};

use super::events::OutputEncoding;
use super::options::{duration, one_of, quoted};
use crate::agent_protocol::Language;
use crate::http::query::single_param;
use crate::runtime::ExecSpec;

/// The sandbox's home directory: where executions run unless they say otherwise.
pub const DEFAULT_CWD: &str = "/root";

/// The language named `name`, if we run it.
pub fn language(name: &str) -> Option<Language> {
    Language::parse(name)
}

/// The server's bounds on executions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecLimits {
    /// When the client names no timeout (`SANDBOX_EXEC_TIMEOUT_SECS`); also the bound of an
    /// execution a restored sandbox still runs (its own timeout is not saved).
    pub default_timeout: Duration,
    /// The largest timeout a client may ask for (`SANDBOX_MAX_EXEC_TIMEOUT_SECS`).
    pub max_timeout: Duration,
    /// The largest code (`SANDBOX_MAX_CODE_BYTES`).
    pub max_code_bytes: usize,
}

/// An option's value as the client sent it.
#[derive(Debug, Clone, Copy)]
pub enum Raw<'a> {
    Absent,
    /// From a query string.
    Text(&'a str),
    /// From a JSON message (`null` counts as absent).
    Json(&'a Value),
}

impl<'a> Raw<'a> {
    fn of(message: &'a Map<String, Value>, key: &str) -> Raw<'a> {
        match message.get(key) {
            None | Some(Value::Null) => Raw::Absent,
            Some(value) => Raw::Json(value),
        }
    }

    /// The value quoted in an error message (bounded).
    fn shown(&self) -> String {
        match self {
            Raw::Absent => "nothing".into(),
            Raw::Text(text) => quoted(&Value::String(text.to_string())),
            Raw::Json(value) => quoted(value),
        }
    }
}

/// The options of an execution besides its language and code, unchecked.
#[derive(Debug, Clone, Copy)]
pub struct RawExecOptions<'a> {
    pub timeout: Raw<'a>,
    pub env: Raw<'a>,
    pub cwd: Raw<'a>,
    pub output_encoding: Raw<'a>,
}

impl<'a> RawExecOptions<'a> {
    /// The options of a session's execution message.
    pub fn from_json(message: &'a Map<String, Value>) -> Self {
        RawExecOptions {
            timeout: Raw::of(message, "timeout"),
            env: Raw::of(message, "env"),
            cwd: Raw::of(message, "cwd"),
            output_encoding: Raw::of(message, "output_encoding"),
        }
    }

    /// The options of `POST /execute` (only `timeout` is one there). A repeated parameter is
    /// an error naming it.
    pub fn from_query(pairs: &'a [(String, String)]) -> Result<Self, String> {
        let timeout = match single_param(pairs, "timeout")? {
            Some(text) => Raw::Text(text),
            None => Raw::Absent,
        };
        Ok(RawExecOptions {
            timeout,
            env: Raw::Absent,
            cwd: Raw::Absent,
            output_encoding: Raw::Absent,
        })
    }
}

/// Checked options of one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub timeout: Duration,
    pub output_encoding: OutputEncoding,
}

impl ExecOptions {
    /// What the runtime runs.
    pub fn spec(&self, language: Language, code: &str) -> ExecSpec {
        ExecSpec {
            language,
            code: code.to_string(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            timeout: self.timeout,
            stdin_bound: crate::runtime::MAX_STDIN_IN_FLIGHT,
            cell: None,
        }
    }
}

/// Checks the size of the code (`code_bytes`) and the options against `limits`, in a fixed
/// order; the first problem is the error.
pub fn check(
    code_bytes: usize,
    raw: &RawExecOptions,
    limits: &ExecLimits,
) -> Result<ExecOptions, String> {
    if code_bytes > limits.max_code_bytes {
        return Err(format!(
            "the code is {code_bytes} bytes; the limit is {}",
            limits.max_code_bytes
        ));
    }
    Ok(ExecOptions {
        env: env(raw.env)?,
        cwd: cwd(raw.cwd)?,
        timeout: timeout(raw.timeout, limits)?,
        output_encoding: output_encoding(raw.output_encoding)?,
    })
}

/// `env`: an object of string values, added to the process's environment.
fn env(raw: Raw) -> Result<Vec<(String, String)>, String> {
    let map = match raw {
        Raw::Absent => return Ok(Vec::new()),
        Raw::Json(Value::Object(map)) => map,
        Raw::Json(_) | Raw::Text(_) => return Err("env must be an object of strings".into()),
    };
    let mut env = Vec::with_capacity(map.len());
    for (key, value) in map {
        let Some(value) = value.as_str() else {
            return Err(format!("env value of {key:?} must be a string"));
        };
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(format!("invalid environment variable name {key:?}"));
        }
        env.push((key.clone(), value.to_string()));
    }
    Ok(env)
}

/// `cwd`: an absolute path inside the sandbox.
pub fn cwd(raw: Raw) -> Result<String, String> {
    match raw {
        Raw::Absent => Ok(DEFAULT_CWD.to_string()),
        Raw::Json(Value::String(cwd)) if cwd.starts_with('/') && !cwd.contains('\0') => {
            Ok(cwd.clone())
        }
        Raw::Text(cwd) if cwd.starts_with('/') && !cwd.contains('\0') => Ok(cwd.to_string()),
        // The JSON value as it was (not shortened): paths are short, and clients match on it.
        Raw::Json(other) => Err(format!("cwd must be an absolute path, got {other}")),
        Raw::Text(other) => Err(format!("cwd must be an absolute path, got {other:?}")),
    }
}

/// `timeout`: seconds above 0, at most the server's maximum.
fn timeout(raw: Raw, limits: &ExecLimits) -> Result<Duration, String> {
    let seconds = match raw {
        Raw::Absent => return Ok(limits.default_timeout),
        Raw::Text(text) => text.parse::<f64>().ok(),
        Raw::Json(value) => value.as_f64(),
    };
    seconds
        .and_then(|seconds| duration(seconds, false, limits.max_timeout.as_secs_f64()))
        .ok_or_else(|| {
            format!(
                "timeout must be a number of seconds above 0 and at most {}, got {}",
                limits.max_timeout.as_secs(),
                raw.shown()
            )
        })
}

/// `output_encoding`: `"text"` (the default) or `"base64"`.
fn output_encoding(raw: Raw) -> Result<OutputEncoding, String> {
    let text;
    let value = match raw {
        Raw::Absent => return Ok(OutputEncoding::Text),
        Raw::Json(value) => value,
        Raw::Text(given) => {
            text = Value::String(given.to_string());
            &text
        }
    };
    Ok(
        match one_of("output_encoding", value, &["text", "base64"])? {
            "base64" => OutputEncoding::Base64,
            _ => OutputEncoding::Text,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: ExecLimits = ExecLimits {
        default_timeout: Duration::from_secs(60),
        max_timeout: Duration::from_secs(600),
        max_code_bytes: 10,
    };

    fn json_options(value: Value) -> Result<ExecOptions, String> {
        let Value::Object(map) = value else {
            panic!("not an object")
        };
        check(4, &RawExecOptions::from_json(&map), &LIMITS)
    }

    fn query_options(query: &str) -> Result<ExecOptions, String> {
        let pairs = crate::http::query::parse_query(query);
        check(4, &RawExecOptions::from_query(&pairs)?, &LIMITS)
    }

    #[test]
    fn defaults() {
        let expected = ExecOptions {
            env: Vec::new(),
            cwd: "/root".into(),
            timeout: Duration::from_secs(60),
            output_encoding: OutputEncoding::Text,
        };
        assert_eq!(json_options(json!({})), Ok(expected.clone()));
        assert_eq!(
            json_options(
                json!({"env": null, "cwd": null, "timeout": null, "output_encoding": null})
            ),
            Ok(expected.clone())
        );
        assert_eq!(query_options("language=bash"), Ok(expected));
    }

    /// The same rule and the same message for a query string and a JSON message.
    #[test]
    fn one_timeout_rule_for_both_ways_in() {
        assert_eq!(
            json_options(json!({"timeout": 2.5})).unwrap().timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(
            query_options("timeout=2.5").unwrap().timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(
            query_options("timeout=600").unwrap().timeout,
            Duration::from_secs(600)
        );
        let rule = "timeout must be a number of seconds above 0 and at most 600, got ";
        // The value is quoted as it was sent: a JSON number as a number, query text as text.
        for (json, json_shown, query, query_shown) in [
            (json!(0), "0", "0", r#""0""#),
            (json!(-1), "-1", "-1", r#""-1""#),
            (json!(601), "601", "601", r#""601""#),
            (json!(1e20), "1e+20", "1e20", r#""1e20""#),
            (json!("5"), r#""5""#, "five", r#""five""#),
            (json!(true), "true", "inf", r#""inf""#),
            (json!([]), "[]", "NaN", r#""NaN""#),
        ] {
            assert_eq!(
                json_options(json!({ "timeout": json })),
                Err(format!("{rule}{json_shown}"))
            );
            assert_eq!(
                query_options(&format!("timeout={query}")),
                Err(format!("{rule}{query_shown}"))
            );
        }
        assert_eq!(
            query_options("timeout=1&timeout=2").unwrap_err(),
            "query parameter \"timeout\" is given more than once"
        );
    }

    #[test]
    fn env_cwd_and_encoding_name_the_option() {
        assert_eq!(
            json_options(json!({"env": {"A": "1"}, "cwd": "/tmp", "output_encoding": "base64"})),
            Ok(ExecOptions {
                env: vec![("A".into(), "1".into())],
                cwd: "/tmp".into(),
                timeout: Duration::from_secs(60),
                output_encoding: OutputEncoding::Base64,
            })
        );
        for (options, message) in [
            (json!({"env": []}), "env must be an object of strings"),
            (
                json!({"env": {"A": 1}}),
                "env value of \"A\" must be a string",
            ),
            (
                json!({"env": {"A=B": "1"}}),
                "invalid environment variable name \"A=B\"",
            ),
            (
                json!({"env": {"": "1"}}),
                "invalid environment variable name \"\"",
            ),
            (
                json!({"cwd": "tmp"}),
                "cwd must be an absolute path, got \"tmp\"",
            ),
            (json!({"cwd": 5}), "cwd must be an absolute path, got 5"),
            (
                json!({"output_encoding": "hex"}),
                r#"output_encoding must be "text" or "base64", got "hex""#,
            ),
            (
                json!({"output_encoding": 64}),
                r#"output_encoding must be "text" or "base64", got 64"#,
            ),
        ] {
            assert_eq!(
                json_options(options.clone()),
                Err(message.into()),
                "{options}"
            );
        }
    }

    #[test]
    fn code_size_comes_first() {
        let Value::Object(map) = json!({"timeout": "bad"}) else {
            unreachable!()
        };
        assert_eq!(
            check(11, &RawExecOptions::from_json(&map), &LIMITS),
            Err("the code is 11 bytes; the limit is 10".into())
        );
    }

    #[test]
    fn languages() {
        assert_eq!(language("python"), Some(Language::Python));
        assert_eq!(language("bash"), Some(Language::Bash));
        assert_eq!(language("Python"), None);
        assert_eq!(language(""), None);
    }
}
