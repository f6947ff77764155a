"""Endpoint URLs from the user's base URL (``ws://``, ``wss://``, ``http://`` or ``https://``)."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit


def base_url(url: str) -> str:
    """Normalise the service URL: http(s) becomes ws(s), no trailing slash."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(
            f"the sandbox URL must start with ws://, wss://, http:// or https://: {url!r}"
        )
    if not parts.netloc:
        raise ValueError(f"the sandbox URL has no host: {url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def create_url(url: str) -> str:
    return base_url(url) + "/create"


def attach_url(url: str, sandbox_id: str, sandbox_token: str | None) -> str:
    out = base_url(url) + "/attach/" + quote(sandbox_id, safe="")
    if sandbox_token is not None:
        out += "?sandbox_token=" + quote(sandbox_token, safe="")
    return out


def redact(url: str) -> str:
    """The URL without its query (which holds the sandbox token)."""
    return url.split("?", 1)[0]
