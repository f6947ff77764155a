"""``codesandbox mcp``: a stdio bridge to the server's MCP endpoint ``/mcp``.

Desktop MCP hosts that only launch local commands speak MCP over the command's stdin and
stdout (one JSON-RPC message per line). The bridge posts each message to ``/mcp`` and writes
what answers it (a JSON body, or the events of an event stream) to stdout, one per line. It
keeps the ``Mcp-Session-Id`` the initialize response gives and the negotiated protocol
version, sends them on every later request, and ends the session (``DELETE``) when stdin
closes. Each request is posted from its own thread, so a long tool call does not hold up a
``notifications/cancelled`` for it. Only the standard library is used.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from typing import IO, Any

__all__ = ["Bridge"]

_TIMEOUT_SECONDS = 3600.0
_META_VERSION = "io.modelcontextprotocol/protocolVersion"


class Bridge:
    """Relays JSON-RPC lines from ``source`` to ``url`` and answers to ``sink``."""

    def __init__(self, url: str, api_key: str | None, sink: IO[str]) -> None:
        self.url = url
        self.api_key = api_key
        self.sink = sink
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._write_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _headers(self, message: Any) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        params = message.get("params") if isinstance(message, dict) else None
        meta = params.get("_meta") if isinstance(params, dict) else None
        version = meta.get(_META_VERSION) if isinstance(meta, dict) else None
        if isinstance(version, str):
            # A host speaking the single-exchange revision: its routing headers.
            headers["MCP-Protocol-Version"] = version
            headers["Mcp-Method"] = str(message.get("method", ""))
            name = params.get("name") if isinstance(params, dict) else None
            if isinstance(name, str):
                headers["Mcp-Name"] = name
        elif self.protocol_version:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    def _emit(self, text: str) -> None:
        with self._write_lock:
            self.sink.write(text.strip() + "\n")
            self.sink.flush()

    def _error(self, message: Any, text: str) -> None:
        if isinstance(message, dict) and "id" in message and "method" in message:
            error = {"code": -32603, "message": f"codesandbox mcp bridge: {text}"}
            self._emit(json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error}))
        else:
            print(f"codesandbox mcp: {text}", file=sys.stderr)

    def post(self, line: str) -> None:
        """Post one message and relay its answer."""
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        request = urllib.request.Request(
            self.url, data=line.encode(), headers=self._headers(message), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS) as response:
                self._relay(message, response)
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            if body.strip().startswith("{"):
                self._emit(body)
            else:
                self._error(message, f"HTTP {error.code} from {self.url}")
        except (urllib.error.URLError, OSError) as error:
            self._error(message, f"cannot reach {self.url}: {error}")

    def _relay(self, message: Any, response: Any) -> None:
        session = response.headers.get("Mcp-Session-Id")
        if session:
            self.session_id = session
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("text/event-stream"):
            data: list[str] = []
            for raw in response:
                text = raw.decode(errors="replace").rstrip("\r\n")
                if text.startswith("data:"):
                    data.append(text[5:].lstrip())
                elif not text and data:
                    self._emit("\n".join(data))
                    data = []
            return
        body = response.read().decode(errors="replace")
        if not body.strip():
            return
        answer = json.loads(body)
        result = answer.get("result") if isinstance(answer, dict) else None
        if isinstance(message, dict) and message.get("method") == "initialize":
            version = result.get("protocolVersion") if isinstance(result, dict) else None
            if isinstance(version, str):
                self.protocol_version = version
        self._emit(body)

    def relay(self, source: IO[str]) -> None:
        """Relay every line of ``source``; end the session when it closes."""
        for line in source:
            if not line.strip():
                continue
            try:
                method = json.loads(line).get("method")
            except (ValueError, AttributeError):
                method = None
            if method == "initialize":
                # The session id must be known before anything else is posted.
                self.post(line)
                continue
            thread = threading.Thread(target=self.post, args=(line,), daemon=True)
            thread.start()
            self._threads.append(thread)
            self._threads = [alive for alive in self._threads if alive.is_alive()]
        for thread in self._threads:
            thread.join(timeout=5)
        self.close()

    def close(self) -> None:
        if not self.session_id:
            return
        headers = {"Mcp-Session-Id": self.session_id}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, headers=headers, method="DELETE")
        try:
            with urllib.request.urlopen(request, timeout=30):
                pass
        except (urllib.error.URLError, OSError):
            pass
