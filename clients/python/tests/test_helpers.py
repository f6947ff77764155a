"""URLs, TLS defaults and the reconnect policy (no network)."""

from __future__ import annotations

import ssl

import pytest

from codesandbox import ReconnectOptions
from codesandbox._transport import default_ssl_context
from codesandbox._urls import attach_url, base_url, create_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ws://127.0.0.1:8080", "ws://127.0.0.1:8080"),
        ("ws://127.0.0.1:8080/", "ws://127.0.0.1:8080"),
        ("wss://sandbox.example.run.app", "wss://sandbox.example.run.app"),
        ("https://sandbox.example.run.app/", "wss://sandbox.example.run.app"),
        ("http://localhost:8080/prefix/", "ws://localhost:8080/prefix"),
        ("WSS://Host", "wss://Host"),
    ],
)
def test_base_url(given: str, expected: str) -> None:
    assert base_url(given) == expected


@pytest.mark.parametrize("bad", ["ftp://x", "127.0.0.1:8080", "ws://", ""])
def test_bad_urls(bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked by hand below
        base_url(bad)


def test_create_and_attach_urls() -> None:
    assert create_url("wss://h/") == "wss://h/create"
    assert (
        attach_url("ws://h:1", "abc", "t/k+n=") == "ws://h:1/attach/abc?sandbox_token=t%2Fk%2Bn%3D"
    )
    assert attach_url("ws://h:1", "a/b", None) == "ws://h:1/attach/a%2Fb"


def test_default_ssl_context_verifies() -> None:
    ctx = default_ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname


def test_backoff_is_exponential_and_capped() -> None:
    policy = ReconnectOptions(max_attempts=6, initial_delay=0.5, max_delay=3.0, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_backoff_jitter_stays_in_range() -> None:
    policy = ReconnectOptions(initial_delay=1.0, max_delay=1.0, jitter=0.2)
    for _ in range(100):
        assert 0.8 <= policy.delay(3) <= 1.2


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"initial_delay": -1}, {"multiplier": 0.5}, {"jitter": 1.0}],
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        ReconnectOptions(**kwargs)  # type: ignore[arg-type]


def test_init_message_asks_for_network_only_when_wanted() -> None:
    import json

    from codesandbox._frames import init_message

    common = dict(
        idle_timeout=None,
        enable_checkpoint=False,
        enable_idle_timeout_auto_checkpoint=False,
        enable_sandbox_handoff=False,
        filesystem_snapshot_name=None,
    )
    assert "enable_network" not in json.loads(init_message(**common, enable_network=False))  # type: ignore[arg-type]
    assert json.loads(init_message(**common, enable_network=True))["enable_network"] is True  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, 65536, -1, 8000.0, "8000", True, None])
def test_ports_are_checked_before_anything_is_sent(bad: object) -> None:
    from codesandbox._frames import check_port, init_message

    with pytest.raises(ValueError, match="port must be an integer from 1 to 65535"):
        check_port(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
        init_message(
            idle_timeout=None,
            enable_checkpoint=False,
            enable_idle_timeout_auto_checkpoint=False,
            enable_sandbox_handoff=False,
            filesystem_snapshot_name=None,
            enable_network=False,
            expose_ports=[8000, bad],  # type: ignore[list-item]
        )
    assert check_port(8000) == 8000
