//! The browser playground (issue 17): one page and its files, embedded in the binary, served at
//! `/` and `/playground` unless `SANDBOX_PLAYGROUND=off`.
//!
//! The page is a third client of the public protocol: it holds no secret and reaches nothing the
//! API does not already offer, so it is served without an API key; every call it makes carries
//! the key the user typed (docs/security.md, "The playground"). The Content-Security-Policy
//! keeps it to its own files and its own origin: no inline script, nothing from elsewhere, not
//! framed by other sites.

use super::api::{ApiError, Response};

/// A file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: &str = include_str!("playground/index.html");

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/playground/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("playground/style.css"),
    },
    Asset {
        path: "/playground/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("playground/app.js"),
    },
    Asset {
        path: "/playground/client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("playground/client.js"),
    },
    Asset {
        path: "/playground/metrics.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("playground/metrics.js"),
    },
];

/// What the page may load and talk to: its own scripts and styles, images it builds itself
/// (`data:` URLs of PNG results), fetch and WebSocket to its own origin ('self' covers ws: and
/// wss: of the same host, CSP Level 3). Nothing inline, no plugins, no forms, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The answer to `GET /`, `/playground` or `/playground/<file>`; 404 for other files, and for
/// everything when the playground is off.
pub fn response(path: &str, enabled: bool) -> Result<Response, ApiError> {
    if !enabled {
        return Err(ApiError::NotFound(format!(
            "no such endpoint {path:?}: the playground is off (SANDBOX_PLAYGROUND=off)"
        )));
    }
    let (content_type, body) = match path {
        "/" | "/playground" | "/playground/" => ("text/html; charset=utf-8", INDEX),
        _ => match ASSETS.iter().find(|asset| asset.path == path) {
            Some(asset) => (asset.content_type, asset.body),
            None => {
                return Err(ApiError::NotFound(format!(
                    "no such playground file {path:?}"
                )))
            }
        },
    };
    Ok(Response::new(200, content_type, body.as_bytes().to_vec())
        .header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .header("X-Content-Type-Options", "nosniff")
        .header("X-Frame-Options", "DENY")
        .header("Referrer-Policy", "no-referrer")
        .header("Cross-Origin-Opener-Policy", "same-origin")
        // Small files: revalidate each time, so a new server version is seen at once.
        .header("Cache-Control", "no-cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(response: &Response) -> String {
        String::from_utf8(response.encode(true, false)).unwrap()
    }

    #[test]
    fn the_page_and_its_files_are_served_with_the_policy() {
        for (path, content_type) in [
            ("/", "text/html"),
            ("/playground", "text/html"),
            ("/playground/", "text/html"),
            ("/playground/app.js", "text/javascript"),
            ("/playground/client.js", "text/javascript"),
            ("/playground/metrics.js", "text/javascript"),
            ("/playground/style.css", "text/css"),
        ] {
            let answer = text(&response(path, true).unwrap());
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{path}");
            assert!(
                answer.contains(&format!("Content-Type: {content_type}; charset=utf-8\r\n")),
                "{path}: {answer}"
            );
            assert!(
                answer.contains(&format!(
                    "Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\n"
                )),
                "{path}"
            );
            assert!(answer.contains("X-Content-Type-Options: nosniff\r\n"));
        }
        assert_eq!(
            response("/playground/nope.js", true).unwrap_err().status(),
            404
        );
        assert_eq!(response("/", false).unwrap_err().status(), 404);
        assert_eq!(
            response("/playground/app.js", false).unwrap_err().status(),
            404
        );
    }

    /// The policy forbids inline code, so the page must have none: every script is a module
    /// file of the page, every style in the style sheet, and nothing comes from elsewhere.
    #[test]
    fn the_page_has_no_inline_code_and_loads_only_its_own_files() {
        let lower = INDEX.to_ascii_lowercase();
        assert!(!lower.contains(" style="), "inline style attribute");
        assert!(!lower.contains("<style"), "inline style element");
        let handler = lower.match_indices(" on").any(|(at, _)| {
            let rest = &lower[at + 3..];
            let name_end = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(0);
            name_end > 0 && rest[name_end..].starts_with('=')
        });
        assert!(!handler, "inline event handler attribute");
        assert!(!lower.contains("javascript:"));
        for (at, _) in lower.match_indices("<script") {
            let tag = &lower[at..at + lower[at..].find('>').unwrap()];
            assert!(tag.contains("src=\"/playground/"), "inline script: {tag}");
        }
        for file in [INDEX]
            .into_iter()
            .chain(ASSETS.iter().map(|asset| asset.body))
        {
            assert!(
                !file.contains("http://"),
                "absolute URL in a playground file"
            );
            assert!(
                !file.contains("https://"),
                "absolute URL in a playground file"
            );
            assert!(!file.contains("innerHTML"), "HTML built from strings");
            // The one place HTML from a sandbox is shown: a code cell's result, in a frame
            // with every sandbox restriction.
            if file.contains("srcdoc") {
                assert_eq!(file.matches(".srcdoc = ").count(), 1, "one srcdoc");
                assert!(
                    file.contains("iframe.setAttribute('sandbox', '');"),
                    "srcdoc only in a sandboxed iframe"
                );
            }
        }
        // Modules import one another by the paths served above.
        for asset in &ASSETS {
            for line in asset
                .body
                .lines()
                .filter(|line| line.starts_with("import "))
            {
                let from = line.split('\'').nth(1).unwrap();
                let path = format!("/playground/{}", from.trim_start_matches("./"));
                assert!(
                    ASSETS.iter().any(|other| other.path == path),
                    "{}: {line}",
                    asset.path
                );
            }
        }
    }
}
