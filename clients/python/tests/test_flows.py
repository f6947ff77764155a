"""Replays the message flows of tests/flows/*.json (the repository's one corpus, also
replayed by the TypeScript client and the server's session tests) through the public
API, over a scripted transport.

For each flow: ``call`` steps make the API call (as a task), ``client`` steps check the
next frame the client sent (exactly), ``server`` / ``server_raw`` / ``close`` / ``drop``
steps feed the client, ``connect`` steps check the next connection it opened, and
``expect`` steps check what the API shows. ``runtime`` steps are the server's and are
skipped. At the end every frame the client sent and every connection it opened must
have been checked by a step. The vocabulary is in tests/flows/README.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from codesandbox import (
    CodeContext,
    Execution,
    ProcessInfo,
    ReconnectOptions,
    RunResult,
    Sandbox,
    SandboxError,
    SandboxProcess,
)

from .scripted import ScriptedConnection, ScriptedTransport

FLOWS = Path(__file__).resolve().parents[3] / "tests" / "flows"
URL = "ws://sandbox.test"
WAIT = 2.0  # seconds an expected outcome may take (all in memory: it takes microseconds)


def _flows() -> list[Any]:
    params = []
    for path in sorted(FLOWS.glob("*.json")):
        flow = json.loads(path.read_text(encoding="utf-8"))
        if "clients" in flow.get("readers", ["server", "clients"]):
            params.append(pytest.param(flow, id=path.stem))
    return params


def same_json(actual: Any, expected: Any) -> bool:
    """JSON equality that tells ``true`` from ``1`` (Python's ``==`` does not)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and set(actual) == set(expected)
            and all(same_json(actual[k], v) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(same_json(a, e) for a, e in zip(actual, expected))
        )
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return actual == expected
    return type(actual) is type(expected) and actual == expected


def matches(actual: Any, expected: Any) -> bool:
    """Partial match: dicts compare only the keys the flow gives; lists element-wise."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return all(k in actual and matches(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(matches(a, e) for a, e in zip(actual, expected))
    return same_json(actual, expected)


def error_view(error: BaseException) -> dict[str, Any]:
    view: dict[str, Any] = {"class": type(error).__name__, "message": str(error)}
    if isinstance(error, SandboxError):
        view["message"] = error.message
        view["status"] = error.status
    return view


def value_view(value: Any) -> Any:
    """A call's result as JSON, in the corpus's snake_case vocabulary."""
    if isinstance(value, Sandbox):
        return {
            "sandbox_id": value.sandbox_id,
            "sandbox_token": value.sandbox_token,
            "protocol": value.protocol,
            "state": value.state,
        }
    if isinstance(value, SandboxProcess):
        return {"process_id": value.process_id}
    if isinstance(value, (RunResult, ProcessInfo)):
        return asdict(value)
    if isinstance(value, Execution):
        return {
            "text": value.text,
            "results": [
                {"is_main_result": r.is_main_result, "data": r.data} for r in value.results
            ],
            "stdout": value.logs.stdout,
            "stderr": value.logs.stderr,
            "error": None if value.error is None else asdict(value.error),
            "process_id": value.process_id,
            "exit_code": value.exit_code,
            "reason": value.reason,
        }
    if isinstance(value, CodeContext):
        view = {"context_id": value.context_id, "cwd": value.cwd, "language": value.language}
        return view | {k: v for k, v in (("state", value.state), ("died", value.died)) if v}
    if isinstance(value, list):
        return [value_view(item) for item in value]
    return value


class Replay:
    def __init__(self, flow: dict[str, Any]) -> None:
        self.flow = flow
        self.transport = ScriptedTransport()
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.output: dict[str, dict[str, str]] = {}
        self.notices: list[SandboxError] = []
        self.statuses: list[str] = []
        self.sandbox: Sandbox | None = None
        # The connection the flow talks about: the last one a step checked. (The client
        # may already have opened the next one, e.g. retrying a re-attach.)
        self.connection: ScriptedConnection | None = None

    # ------------------------------------------------------------------ calls

    def options(self, args: dict[str, Any]) -> dict[str, Any]:
        options = dict(args)
        reconnect = options.pop("auto_reconnect", False)
        if reconnect:
            attempts = reconnect.get("max_attempts", 3) if isinstance(reconnect, dict) else 3
            options["auto_reconnect"] = ReconnectOptions(
                max_attempts=attempts, initial_delay=0, jitter=0
            )
        options.setdefault("request_timeout", 5)
        options.setdefault("close_timeout", 5)
        options["transport"] = self.transport
        options["on_status"] = lambda status, message: self.statuses.append(status)
        options["on_error"] = self.notices.append
        return options

    def collector(self, name: str, stream: str) -> Any:
        self.output.setdefault(name, {"stdout": "", "stderr": ""})

        def collect(text: str) -> None:
            self.output[name][stream] += text

        return collect

    async def process(self, name: str) -> SandboxProcess:
        process = await asyncio.wait_for(asyncio.shield(self.tasks[name]), WAIT)
        assert isinstance(process, SandboxProcess), f"{name} is not a process"
        return process

    async def call(self, name: str, kind: str, args: dict[str, Any]) -> Any:
        if kind == "create":
            sandbox = await Sandbox.create(URL, **self.options(args))
            self.sandbox = sandbox
            return sandbox
        if kind == "attach":
            options = self.options(args)
            sandbox = await Sandbox.attach(
                URL, options.pop("sandbox_id"), options.pop("sandbox_token", None), **options
            )
            self.sandbox = sandbox
            return sandbox
        sandbox = self.sandbox
        assert sandbox is not None, "no sandbox yet: the flow must create or attach first"
        callbacks = {
            "on_stdout": self.collector(name, "stdout"),
            "on_stderr": self.collector(name, "stderr"),
        }
        if kind == "exec":
            return await sandbox.exec(**args, **callbacks)
        if kind == "run":
            args = dict(args)
            if "stdin_b64" in args:
                args["stdin"] = base64.b64decode(args.pop("stdin_b64"))
            return await sandbox.run(**args, **callbacks)
        if kind == "attach_process":
            return await sandbox.attach_process(**args, **callbacks)
        if kind == "stdin":
            process = await self.process(args["process"])
            data = args["data"] if "data" in args else base64.b64decode(args["data_b64"])
            return await process.write(data)
        if kind == "close_stdin":
            return await (await self.process(args["process"])).close_stdin()
        if kind == "kill":
            return await (await self.process(args["process"])).kill()
        if kind == "terminate":
            return await sandbox.terminate()
        if kind == "checkpoint":
            return await sandbox.checkpoint()
        if kind == "snapshot":
            return await sandbox.snapshot_filesystem(args["name"])
        if kind == "list_processes":
            return await sandbox.list_processes()
        if kind == "set_idle_timeout":
            return await sandbox.set_idle_timeout(args["idle_timeout"])
        if kind == "disconnect":
            return await sandbox.disconnect()
        if kind == "run_code":
            return await sandbox.run_code(**args, **callbacks)
        if kind == "create_code_context":
            return await sandbox.create_code_context(**args)
        if kind == "list_code_contexts":
            return await sandbox.list_code_contexts()
        if kind == "restart_code_context":
            return await sandbox.restart_code_context(args["context"])
        if kind == "delete_code_context":
            return await sandbox.delete_code_context(args["context"])
        raise AssertionError(f"unknown call {kind!r}")

    # ------------------------------------------------------------------ steps

    async def settle(self) -> None:
        """Let the client process what it was given (everything is in memory)."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def next_sent(self, where: str) -> dict[str, Any]:
        try:
            _, text = await asyncio.wait_for(self.transport.sent.get(), WAIT)
        except asyncio.TimeoutError:
            raise AssertionError(f"{where}: the client sent nothing") from None
        frame: dict[str, Any] = json.loads(text)
        return frame

    async def step(self, step: dict[str, Any], where: str) -> None:
        if "call" in step:
            ((kind, args),) = step["call"].items()
            name = step.get("as") or (step.get("client") or {}).get("id") or kind
            assert name not in self.tasks, f"{where}: a call named {name!r} exists already"
            self.tasks[name] = asyncio.ensure_future(self.call(name, kind, args or {}))
            await self.settle()
            if "connect" in step:
                await self.connect(step["connect"], where)
            if "client" in step:
                await self.check_sent(step["client"], where)
        elif "client" in step:
            await self.check_sent(step["client"], where)
        elif "connect" in step:
            await self.connect(step["connect"], where)
        elif "server" in step:
            self.current().push(json.dumps(step["server"]))
            await self.settle()
        elif "server_raw" in step:
            self.current().push(step["server_raw"])
            await self.settle()
        elif "close" in step:
            close = step["close"]
            self.current().close_by_server(close["code"], close.get("reason", ""))
            await self.settle()
        elif "drop" in step:
            self.current().drop()
            await self.settle()
        elif "expect" in step:
            await self.expect(step["expect"], where)
        elif "runtime" in step or "control" in step:
            pass  # the server's side of the flow
        else:
            raise AssertionError(f"{where}: unknown step")

    async def check_sent(self, expected: dict[str, Any], where: str) -> None:
        frame = await self.next_sent(where)
        assert same_json(frame, expected), (
            f"{where}\n  expected: {json.dumps(expected)}\n  sent:     {json.dumps(frame)}"
        )

    def current(self) -> ScriptedConnection:
        assert self.connection is not None, "no connection checked yet"
        return self.connection

    async def connect(self, path: str, where: str) -> None:
        try:
            connection = await asyncio.wait_for(self.transport.connections.get(), WAIT)
        except asyncio.TimeoutError:
            raise AssertionError(f"{where}: the client opened no connection") from None
        assert connection.path == path, f"{where}: connected to {connection.path}"
        self.connection = connection

    async def outcome(self, name: str, where: str) -> tuple[Any, BaseException | None]:
        task = self.tasks.get(name)
        assert task is not None, f"{where}: no call named {name!r}"
        with contextlib.suppress(BaseException):  # the task's outcome is read below
            await asyncio.wait_for(asyncio.shield(task), WAIT)
        if not task.done():
            raise AssertionError(f"{where}: call {name!r} is still pending")
        error = task.exception()
        return (None, error) if error is not None else (task.result(), None)

    async def expect(self, expect: dict[str, Any], where: str) -> None:
        if "call" in expect:
            name = expect["call"]
            if expect.get("pending"):
                await self.settle()
                assert not self.tasks[name].done(), f"{where}: {name!r} settled"
                return
            value, error = await self.outcome(name, where)
            if "error" in expect:
                assert error is not None, f"{where}: {name!r} returned {value!r}"
                view = error_view(error)
                assert matches(view, expect["error"]), f"{where}: {name!r} raised {view}"
            else:
                assert error is None, f"{where}: {name!r} raised {error!r}"
                if "returns" in expect:
                    view = value_view(value)
                    assert matches(view, expect["returns"]), f"{where}: {name!r} gave {view}"
        if "process" in expect:
            await self.expect_process(expect["process"], expect, where)
        if "sandbox" in expect:
            assert self.sandbox is not None
            view = value_view(self.sandbox) | {"closed": self.sandbox.closed}
            assert matches(view, expect["sandbox"]), f"{where}: sandbox is {view}"
        if "notices" in expect:
            views = [error_view(e) for e in self.notices]
            self.notices.clear()
            assert matches(views, expect["notices"]), f"{where}: notices were {views}"
        if "statuses" in expect:
            seen, self.statuses = self.statuses, []
            assert seen == expect["statuses"], f"{where}: statuses were {seen}"

    async def expect_process(self, name: str, expect: dict[str, Any], where: str) -> None:
        for stream in ("stdout", "stderr"):
            if stream in expect:
                got = self.output.get(name, {}).get(stream, "")
                assert got == expect[stream], f"{where}: {stream} is {got!r}"
        if not set(expect) - {"process", "stdout", "stderr"}:
            return  # a run(): its output came through the callbacks
        process = await self.process(name)
        if "done" in expect:
            await self.settle()
            assert process.done is expect["done"], f"{where}: done is {process.done}"
        if "error" in expect:
            try:
                await asyncio.wait_for(process.wait(), WAIT)
            except SandboxError as error:
                view = error_view(error)
                assert matches(view, expect["error"]), f"{where}: the process raised {view}"
            else:
                raise AssertionError(f"{where}: the process ended with {process.exit_code}")
        ended = {"exit_code", "reason", "signal", "duration_ms"} & set(expect)
        if ended:
            await asyncio.wait_for(process.wait(), WAIT)
            for key in ended:
                got = getattr(process, key)
                assert same_json(got, expect[key]), f"{where}: {key} is {got!r}"
        for stream in ("stdout", "stderr"):
            if f"{stream}_b64" in expect:
                reader = process.stdout if stream == "stdout" else process.stderr
                data = await asyncio.wait_for(reader.read_all_bytes(), WAIT)
                assert base64.b64encode(data).decode() == expect[f"{stream}_b64"], where
        if "process_id" in expect:
            assert process.process_id == expect["process_id"], where

    async def finish(self) -> None:
        await self.settle()
        assert self.transport.sent.empty(), (
            f"frames sent and not in the flow: {self.transport.sent.get_nowait()[1]}"
        )
        assert self.transport.connections.empty(), "a connection was opened and not in the flow"
        for task in self.tasks.values():
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a failure the flow did not check is fine
            else:
                task.cancel()
        sandbox = self.sandbox
        if sandbox is not None and not sandbox.closed:
            for connection in self.transport.opened:
                connection.drop()
            await self.settle()


SANDBOX_ID = "0123456789abcdef0123456789abcdef"
SANDBOX_TOKEN = "secret-token"
# Create options that are the client's own (not in the init message).
CLIENT_OPTIONS = {"auto_reconnect", "request_timeout", "connect_timeout", "close_timeout"}


def init_frame(options: dict[str, Any]) -> dict[str, Any]:
    """The init message ``Sandbox.create`` sends for these options."""
    frame = {
        "idle_timeout": None,
        "enable_checkpoint": False,
        "enable_idle_timeout_auto_checkpoint": False,
        "enable_sandbox_handoff": False,
        "filesystem_snapshot_name": None,
    }
    frame.update({k: v for k, v in options.items() if k not in CLIENT_OPTIONS})
    if not frame.get("enable_network"):
        frame.pop("enable_network", None)
    return frame


def preamble(flow: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps ``"setup": "create"`` stands for (tests/flows/README.md)."""
    if flow.get("setup") != "create":
        return []
    options = flow.get("create_options", {})
    running: dict[str, Any] = {"event": "status_update", "status": "SANDBOX_RUNNING"}
    if flow.get("protocol") == 2:
        running["protocol"] = 2
    return [
        {"call": {"create": options}, "client": init_frame(options)},
        {"server": {"event": "status_update", "status": "SANDBOX_CREATING"}},
        {"runtime": {"ready": {}}},
        {
            "server": {
                "event": "sandbox_id",
                "sandbox_id": SANDBOX_ID,
                "sandbox_token": SANDBOX_TOKEN,
            }
        },
        {"server": running},
        {"expect": {"call": "create", "returns": {"protocol": flow.get("protocol", 1)}}},
        {"expect": {"statuses": ["SANDBOX_CREATING", "SANDBOX_RUNNING"]}},
    ]


@pytest.mark.parametrize("flow", _flows())
async def test_flow(flow: dict[str, Any]) -> None:
    replay = Replay(flow)
    steps = preamble(flow) + flow["steps"]
    for step in steps:
        if "call" in step and next(iter(step["call"])) == "create":
            step.setdefault("connect", "/create")
    try:
        for index, step in enumerate(steps):
            await replay.step(step, f"step {index}: {json.dumps(step)}")
        await replay.finish()
    finally:
        for task in replay.tasks.values():
            task.cancel()


def test_the_corpus_is_there() -> None:
    flows = list(FLOWS.glob("*.json"))
    assert len(flows) >= 40, f"only {len(flows)} flows in {FLOWS}"
    for path in flows:
        flow = json.loads(path.read_text(encoding="utf-8"))
        assert flow.get("flow"), path
        assert flow.get("steps"), path
        assert set(flow.get("readers", ["server", "clients"])) <= {"server", "clients"}, path
