"""Helpers for playing the server's side in unit tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.server import ServerConnection


def status(name: str, **extra: Any) -> str:
    return json.dumps({"event": "status_update", "status": name, **extra})


def output(stream: str, data: str) -> str:
    return json.dumps({"event": stream, "data": data})


async def created(
    ws: ServerConnection, sandbox_id: str = "sb-1", token: str = "tok-1"
) -> dict[str, Any]:
    """Play the server's side of /create; returns the init message."""
    init: dict[str, Any] = json.loads(await ws.recv())
    await ws.send(status("SANDBOX_CREATING"))
    await ws.send(
        json.dumps({"event": "sandbox_id", "sandbox_id": sandbox_id, "sandbox_token": token})
    )
    await ws.send(status("SANDBOX_RUNNING"))
    return init


async def recv_json(ws: ServerConnection) -> dict[str, Any]:
    """The next client message, without its request ``id`` (a protocol-1 server ignores it;
    tests/flows checks the ids)."""
    msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
    msg.pop("id", None)
    return msg


async def killed(ws: ServerConnection) -> None:
    """Play kill_sandbox's answer and close with 1000."""
    for name in ("SANDBOX_KILLING", "SANDBOX_DELETING", "SANDBOX_DELETED", "SANDBOX_KILLED"):
        await ws.send(status(name))
    await ws.close(1000)


def done(exit_code: int = 0, reason: str = "exited", signal: int | None = None) -> str:
    return status(
        "SANDBOX_EXECUTION_DONE", exit_code=exit_code, signal=signal, reason=reason, duration_ms=1
    )
