"""The JSON messages of docs/protocol.md: encoders for what the client sends, and the
parser for what the server sends. Nothing here does I/O or keeps state.

Keys are snake_case because they are the wire format. Every request carries the ``id``
the protocol core chose (a server that does not know request ids ignores the key).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

logger = logging.getLogger("codesandbox")

StreamName = Literal["stdout", "stderr"]
OutputEncoding = Literal["text", "base64"]

# A text stdin chunk whose JSON escaping would make the message this large is sent as
# base64 instead (control characters cost up to 6 bytes each in JSON; the server refuses
# messages over 4 MiB).
_MAX_TEXT_STDIN_JSON = 3 * 1024 * 1024


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def init_message(
    *,
    idle_timeout: float | None,
    enable_checkpoint: bool,
    enable_idle_timeout_auto_checkpoint: bool,
    enable_sandbox_handoff: bool,
    filesystem_snapshot_name: str | None,
    enable_network: bool,
    labels: Mapping[str, str] | None = None,
    expose_ports: Sequence[int] | None = None,
) -> str:
    """The init object, the first message on ``/create``: always the original's five keys."""
    message: dict[str, Any] = {
        "idle_timeout": idle_timeout,
        "enable_checkpoint": enable_checkpoint,
        "enable_idle_timeout_auto_checkpoint": enable_idle_timeout_auto_checkpoint,
        "enable_sandbox_handoff": enable_sandbox_handoff,
        "filesystem_snapshot_name": filesystem_snapshot_name,
    }
    if enable_network:
        # Our addition; sent only when asked for, so the message stays the original's.
        message["enable_network"] = True
    if labels is not None:
        # Our addition too, sent only when given. The server checks the sizes.
        checked: dict[str, str] = {}
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("labels must map str to str")
            checked[key] = value
        message["labels"] = checked
    if expose_ports:
        # Our addition (issue 20), sent only when given.
        message["expose_ports"] = [check_port(port) for port in expose_ports]
    return dumps(message)


def check_port(port: int) -> int:
    """A TCP port number (1 to 65535), or ``ValueError`` naming the value."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer from 1 to 65535, got {port!r}")
    return port


def exec_message(
    request_id: str,
    code: str,
    language: str,
    *,
    env: dict[str, str] | None,
    cwd: str | None,
    timeout: float | None,
    output_encoding: OutputEncoding,
    pty: dict[str, int] | None = None,
) -> str:
    message: dict[str, Any] = {"id": request_id, "language": language, "code": code}
    # Only the additions that are used, so a core server sees the core message.
    if env is not None:
        message["env"] = dict(env)
    if cwd is not None:
        message["cwd"] = cwd
    if timeout is not None:
        message["timeout"] = timeout
    if output_encoding != "text":
        message["output_encoding"] = output_encoding
    if pty is not None:
        message["pty"] = dict(pty)
    return dumps(message)


def stdin_message(
    request_id: str,
    process_id: int | None,
    data: bytes | None,
    *,
    as_text: bool,
    eof: bool = False,
) -> str:
    """``{"event": "stdin"}``: ``data`` as text when ``as_text`` (it is valid UTF-8), else
    base64; ``process_id`` only when known (protocol 2)."""
    message: dict[str, Any] = {"event": "stdin"}
    if process_id is not None:
        message["process_id"] = process_id
    if data is not None:
        message["data"] = data.decode("utf-8") if as_text else _b64(data)
        if not as_text:
            message["encoding"] = "base64"
    if eof:
        message["eof"] = True
    message["id"] = request_id
    text = dumps(message)
    if as_text and data is not None and len(text.encode("utf-8")) > _MAX_TEXT_STDIN_JSON:
        return stdin_message(request_id, process_id, data, as_text=False, eof=eof)
    return text


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def action_message(action: str, request_id: str, **extra: Any) -> str:
    return dumps({"action": action, **extra, "id": request_id})


def parse_frame(text: str | bytes) -> dict[str, Any] | None:
    """One server frame as a JSON object; ``None`` for anything else (ignored)."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        logger.warning("ignoring a frame that is not JSON: %.200r", text)
        return None
    return value if isinstance(value, dict) else None


def opt_int(value: Any) -> int | None:
    # bool is an int subclass; a boolean is never a valid number here.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def opt_number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
