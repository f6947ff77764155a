"""``Sandbox.list()``: the URL it asks, the answers it parses (recorded from the server), and
the HTTP exchange against a local stand-in (headers sent, refusals and errors raised)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from codesandbox import (
    Sandbox,
    SandboxAuthenticationError,
    SandboxConnectionError,
    SandboxError,
    SandboxInfo,
    SandboxList,
    SyncSandbox,
)
from codesandbox._frames import init_message
from codesandbox._listing import list_url, parse_list

# What the server answered (src/server/api.rs `sandboxes_response`, store_work
# `list_checkpoints`).
LIVE = {
    "sandboxes": [
        {
            "sandbox_id": "0123456789abcdef0123456789abcdef",
            "state": "running",
            "age_secs": 12.5,
            "idle_secs": 3.1,
            "labels": {"team": "search"},
            "attached": True,
            "checkpointable": True,
            "checkpointed": False,
            "handoff": True,
        }
    ]
}
STORE = {
    "sandboxes": [
        {
            "sandbox_id": "00000000000000000000000000000001",
            "state": "checkpointed",
            "checkpointed": True,
            "checkpoint_unix_ms": 1700000000000,
            "size_bytes": 315392,
            "labels": {},
            "handoff": False,
        },
        {"state": "running"},
    ],
    "next_after": "00000000000000000000000000000001",
}


def test_list_urls() -> None:
    assert list_url("wss://h/p/", checkpointed=False, limit=None, after=None) == (
        "https://h/p/sandboxes"
    )
    assert list_url("ws://127.0.0.1:8080", checkpointed=True, limit=5, after="ab") == (
        "http://127.0.0.1:8080/sandboxes?checkpointed=1&limit=5&after=ab"
    )
    assert list_url("https://h", checkpointed=False, limit=None, after=None).startswith("https:")
    for bad in (0, 1001, True, 2.5):
        with pytest.raises(ValueError, match="limit must be an int from 1 to 1000"):
            list_url("ws://h", checkpointed=True, limit=bad, after=None)  # type: ignore[arg-type]


def test_recorded_answers_are_parsed() -> None:
    live = parse_list(json.dumps(LIVE))
    assert live == SandboxList(
        [
            SandboxInfo(
                sandbox_id="0123456789abcdef0123456789abcdef",
                state="running",
                labels={"team": "search"},
                checkpointed=False,
                handoff=True,
                age_secs=12.5,
                idle_secs=3.1,
                attached=True,
                checkpointable=True,
            )
        ],
        None,
    )
    store = parse_list(json.dumps(STORE).encode())
    assert [info.sandbox_id for info in store.sandboxes] == ["00000000000000000000000000000001"]
    assert store.sandboxes[0].size_bytes == 315392
    assert store.sandboxes[0].age_secs is None
    assert store.next_after == "00000000000000000000000000000001"
    for body in ("not json", "[]", '{"sandboxes": 3}'):
        with pytest.raises(SandboxError):
            parse_list(body)


def test_labels_go_in_the_init_only_when_given() -> None:
    plain = json.loads(
        init_message(
            idle_timeout=None,
            enable_checkpoint=False,
            enable_idle_timeout_auto_checkpoint=False,
            enable_sandbox_handoff=True,
            filesystem_snapshot_name=None,
            enable_network=False,
        )
    )
    assert "labels" not in plain
    assert plain["enable_sandbox_handoff"] is True
    labelled = json.loads(
        init_message(
            idle_timeout=None,
            enable_checkpoint=False,
            enable_idle_timeout_auto_checkpoint=False,
            enable_sandbox_handoff=False,
            filesystem_snapshot_name=None,
            enable_network=False,
            labels={"team": "search"},
        )
    )
    assert labelled["labels"] == {"team": "search"}
    with pytest.raises(TypeError, match="labels must map str to str"):
        init_message(
            idle_timeout=None,
            enable_checkpoint=False,
            enable_idle_timeout_auto_checkpoint=False,
            enable_sandbox_handoff=False,
            filesystem_snapshot_name=None,
            enable_network=False,
            labels={"n": 1},  # type: ignore[dict-item]
        )


class _Recorded:
    """What the stand-in saw, and what it answers."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.authorization: list[str | None] = []
        self.status = 200
        self.body: Any = LIVE


@pytest.fixture
def stand_in() -> Iterator[tuple[str, _Recorded]]:
    recorded = _Recorded()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            recorded.paths.append(self.path)
            recorded.authorization.append(self.headers.get("Authorization"))
            body = json.dumps(recorded.body).encode()
            self.send_response(recorded.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.server_address[1]}", recorded
    finally:
        server.shutdown()
        server.server_close()


async def test_list_asks_the_server_with_the_api_key(stand_in: tuple[str, _Recorded]) -> None:
    url, recorded = stand_in
    listed = await Sandbox.list(url, api_key="key-1")
    assert listed.sandboxes[0].labels == {"team": "search"}
    recorded.body = STORE
    page = await Sandbox.list(url, checkpointed=True, limit=2, after="0" * 32)
    assert page.next_after == "00000000000000000000000000000001"
    assert recorded.paths == [
        "/sandboxes",
        f"/sandboxes?checkpointed=1&limit=2&after={'0' * 32}",
    ]
    assert recorded.authorization == ["Bearer key-1", None]
    assert SyncSandbox.list(url, checkpointed=True).sandboxes[0].checkpointed


async def test_refusals_and_errors_are_raised(stand_in: tuple[str, _Recorded]) -> None:
    url, recorded = stand_in
    recorded.status, recorded.body = 401, {"error": "missing api key"}
    with pytest.raises(SandboxAuthenticationError, match="missing api key") as refused:
        await Sandbox.list(url)
    assert refused.value.http_status == 401
    recorded.status, recorded.body = 501, {"error": "checkpointing is not enabled"}
    with pytest.raises(SandboxError, match="HTTP 501: checkpointing is not enabled"):
        await Sandbox.list(url, checkpointed=True)
    with pytest.raises(SandboxConnectionError):
        await Sandbox.list("ws://127.0.0.1:9", timeout=5)
