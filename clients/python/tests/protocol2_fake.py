"""A stand-in server that speaks protocol 2 (the design's sections 1-6 and 10), running
each execution as a local subprocess (no sandbox, no isolation: tests only, on
127.0.0.1).

It lets the clients' protocol-2 code paths (concurrent processes, stdin windows and
acknowledgements, process handles, replay after reconnect) run end to end without a sandbox
server, over real sockets, with real process output and real 16 MiB stdin.
``test_protocol2.py`` runs against it always, and against the real server (which announces
protocol 2) when ``SANDBOX_TEST_URL`` is set.

    python tests/protocol2_fake.py [--port N]   # prints its ws:// URL, serves until killed
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import codecs
import contextlib
import json
import os
import secrets
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

WINDOW = 4 * 1024 * 1024
MAX_PROCESSES = 16
CHUNK = 64 * 1024


def _status(status: str, **extra: Any) -> dict[str, Any]:
    return {"event": "status_update", "status": status, **extra}


@dataclass
class Process:
    process_id: int
    request_id: str | None
    language: str
    proc: asyncio.subprocess.Process
    base64: bool
    started_unix_ms: int
    written: int = 0
    running: bool = True
    killed: bool = False
    # A client follows it (its events are sent): from the exec, a reconnect or an
    # attach_process, until that client goes away.
    followed: bool = True
    held: list[dict[str, Any]] = field(default_factory=list)
    stdin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Session:
    def __init__(self, sandbox_id: str, token: str) -> None:
        self.sandbox_id = sandbox_id
        self.token = token
        self.ws: ServerConnection | None = None
        self.processes: dict[int, Process] = {}
        self.next_pid = 1
        self.cwd = tempfile.mkdtemp(prefix="protocol2-fake-")
        self.idle_timeout: float = 300
        self.watchers: set[asyncio.Future[None]] = set()

    async def send(self, frame: dict[str, Any]) -> None:
        if self.ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(json.dumps(frame))

    async def emit(self, process: Process, frame: dict[str, Any]) -> None:
        """A process's event: sent while a client follows it, else held for later."""
        if self.ws is not None and process.followed:
            await self.send({**frame, "id": process.request_id, "process_id": process.process_id})
        else:
            process.held.append(frame)

    async def follow_again(self, process: Process) -> None:
        process.followed = True
        held, process.held = process.held, []
        for frame in held:
            await self.send({**frame, "id": process.request_id, "process_id": process.process_id})
        self.forget_if_reported(process)

    def detach(self) -> None:
        self.ws = None
        for process in self.processes.values():
            process.followed = False

    async def error(self, status: str, message: str, request_id: Any = None) -> None:
        extra = {} if request_id is None else {"id": request_id}
        await self.send(_status(status, **extra, message=message))
        await self.send({"event": "error", **extra, "message": message})

    # ------------------------------------------------------------------ messages

    async def on_message(self, message: dict[str, Any]) -> bool:
        """False when the connection must end."""
        request_id = message.get("id")
        action = message.get("action")
        if message.get("event") == "stdin":
            await self.stdin(message, request_id)
        elif action == "kill_process":
            await self.kill(message, request_id)
        elif action == "list_processes":
            await self.send(
                {
                    "event": "reply",
                    "id": request_id,
                    "processes": [
                        {
                            "process_id": p.process_id,
                            "id": p.request_id,
                            "kind": "exec",
                            "language": p.language,
                            "running": p.running,
                            "started_unix_ms": p.started_unix_ms,
                        }
                        for p in self.processes.values()
                    ],
                }
            )
        elif action == "attach_process":
            process = self.processes.get(message.get("process_id"))  # type: ignore[arg-type]
            if process is None:
                await self.error(
                    "SANDBOX_EXECUTION_ERROR", f"no process {message.get('process_id')}", request_id
                )
                return True
            process.request_id = request_id
            await self.send({"event": "reply", "id": request_id, "process_id": process.process_id})
            await self.follow_again(process)
        elif action == "reconnect":
            for process in list(self.processes.values()):
                await self.follow_again(process)
        elif action == "set_idle_timeout":
            value = message.get("idle_timeout")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                await self.error(
                    "SANDBOX_REQUEST_ERROR",
                    f"idle_timeout must be a number of seconds >= 0, got {json.dumps(value)}",
                    request_id,
                )
            else:
                self.idle_timeout = value
                await self.send({"event": "reply", "id": request_id, "idle_timeout": value})
        elif action == "kill_sandbox":
            for status in ("SANDBOX_KILLING", "SANDBOX_DELETING"):
                await self.send(_status(status, id=request_id))
            await self.kill_all()
            for status in ("SANDBOX_DELETED", "SANDBOX_KILLED"):
                await self.send(_status(status, id=request_id))
            return False
        elif "code" in message and "language" in message:
            await self.exec(message, request_id)
        else:
            await self.error(
                "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR",
                "Unsupported language or message. Supported languages: python, bash.",
                request_id,
            )
        return True

    async def exec(self, message: dict[str, Any], request_id: Any) -> None:
        language = message["language"]
        if language not in ("python", "bash"):
            await self.error(
                "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR",
                "Unsupported language or message. Supported languages: python, bash.",
                request_id,
            )
            return
        if sum(p.running for p in self.processes.values()) >= MAX_PROCESSES:
            await self.error(
                "SANDBOX_EXECUTION_ERROR",
                f"this session already runs {MAX_PROCESSES} processes",
                request_id,
            )
            return
        argv = ["python3", "-c"] if language == "python" else ["bash", "-c"]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            message["code"],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=message.get("cwd") or self.cwd,
            env={**os.environ, **(message.get("env") or {})},
            start_new_session=True,
        )
        process = Process(
            self.next_pid,
            request_id,
            language,
            proc,
            message.get("output_encoding") == "base64",
            int(time.time() * 1000),
        )
        self.next_pid += 1
        self.processes[process.process_id] = process
        await self.emit(process, _status("SANDBOX_EXECUTION_RUNNING", stdin_window=WINDOW))
        self.watchers.add(asyncio.ensure_future(self.watch(process)))

    async def watch(self, process: Process) -> None:
        started = time.monotonic()
        assert process.proc.stdout is not None
        assert process.proc.stderr is not None
        await asyncio.gather(
            self.pump(process, process.proc.stdout, "stdout"),
            self.pump(process, process.proc.stderr, "stderr"),
        )
        code = await process.proc.wait()
        process.running = False
        signal_number = -code if code < 0 else None
        reason = "exited" if signal_number is None else "signaled"
        if process.killed:
            reason = "killed"
        await self.emit(
            process,
            _status(
                "SANDBOX_EXECUTION_DONE",
                exit_code=128 + signal_number if signal_number else code,
                signal=signal_number,
                reason=reason,
                timed_out=False,
                duration_ms=int((time.monotonic() - started) * 1000),
            ),
        )
        self.forget_if_reported(process)

    def forget_if_reported(self, process: Process) -> None:
        if not process.running and process.followed and not process.held:
            self.processes.pop(process.process_id, None)

    async def pump(self, process: Process, reader: asyncio.StreamReader, name: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                break
            if process.base64:
                frame = {
                    "event": name,
                    "data": base64.b64encode(chunk).decode(),
                    "encoding": "base64",
                }
            else:
                text = decoder.decode(chunk)
                if not text:
                    continue
                frame = {"event": name, "data": text}
            await self.emit(process, frame)
        tail = decoder.decode(b"", final=True)
        if tail and not process.base64:
            await self.emit(process, {"event": name, "data": tail})

    async def stdin(self, message: dict[str, Any], request_id: Any) -> None:
        process = self.processes.get(message.get("process_id"))  # type: ignore[arg-type]
        if process is None:
            await self.error(
                "SANDBOX_EXECUTION_ERROR", f"no process {message.get('process_id')}", request_id
            )
            return
        if not process.running:
            await self.error(
                "SANDBOX_STDIN_ERROR", f"process {process.process_id} has ended", request_id
            )
            return
        data = message.get("data")
        payload = b""
        if isinstance(data, str):
            payload = (
                base64.b64decode(data) if message.get("encoding") == "base64" else data.encode()
            )
        stdin = process.proc.stdin
        assert stdin is not None
        async with process.stdin_lock:
            if payload:
                try:
                    stdin.write(payload)
                    await stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the process closed its stdin: discarded, still consumed
                process.written += len(payload)
                await self.send(
                    {
                        "event": "stdin_ack",
                        "id": process.request_id,
                        "process_id": process.process_id,
                        "written": process.written,
                    }
                )
            if message.get("eof"):
                stdin.close()

    async def kill(self, message: dict[str, Any], request_id: Any) -> None:
        process = self.processes.get(message.get("process_id"))  # type: ignore[arg-type]
        if process is None or not process.running:
            await self.error(
                "SANDBOX_EXECUTION_FORCE_KILL_ERROR",
                f"no process {message.get('process_id')}",
                request_id,
            )
            return
        process.killed = True
        os.killpg(process.proc.pid, signal.SIGKILL)
        await self.send(
            _status("SANDBOX_EXECUTION_FORCE_KILLED", id=request_id, process_id=process.process_id)
        )

    async def kill_all(self) -> None:
        for process in self.processes.values():
            if process.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.proc.pid, signal.SIGKILL)


class Server:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        if parts.path == "/create":
            await ws.recv()  # the init object
            session = Session(secrets.token_hex(16), secrets.token_hex(16))
            self.sessions[session.sandbox_id] = session
            await ws.send(json.dumps(_status("SANDBOX_CREATING")))
            await ws.send(
                json.dumps(
                    {
                        "event": "sandbox_id",
                        "sandbox_id": session.sandbox_id,
                        "sandbox_token": session.token,
                    }
                )
            )
        elif parts.path.startswith("/attach/"):
            found = self.sessions.get(parts.path.removeprefix("/attach/"))
            token = parse_qs(parts.query).get("sandbox_token", [""])[0]
            if found is None:
                await ws.send(json.dumps(_status("SANDBOX_NOT_FOUND", message="not found")))
                await ws.close(1011)
                return
            if token != found.token:
                await ws.send(json.dumps(_status("SANDBOX_PERMISSION_DENIAL_ERROR", message="no")))
                await ws.close(4000)
                return
            if found.ws is not None:
                await ws.send(json.dumps(_status("SANDBOX_IN_USE", message="in use")))
                await ws.close(1011)
                return
            session = found
        else:
            await ws.close(1008)
            return
        session.ws = ws
        await ws.send(json.dumps(_status("SANDBOX_RUNNING", protocol=2)))
        try:
            async for text in ws:
                if not await session.on_message(json.loads(text)):
                    await ws.close(1000, "done")
                    self.sessions.pop(session.sandbox_id, None)
                    return
        except ConnectionClosed:
            pass
        finally:
            if session.ws is ws:
                session.detach()


async def start(port: int = 0) -> tuple[Any, str]:
    """Start the fake on 127.0.0.1; returns (server, its ws:// URL)."""
    fake = Server()
    server = await serve(fake.handle, "127.0.0.1", port, compression=None, max_size=None)
    bound = next(iter(server.sockets)).getsockname()[1]
    return server, f"ws://127.0.0.1:{bound}"


class InThread:
    """The fake on its own event loop in a daemon thread (for synchronous tests)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.url = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server, url = await start(args.port)
    print(url, flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main())
