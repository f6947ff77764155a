"""The sans-IO protocol against recorded frame sequences (tests/fixtures/*.json).

Each fixture file holds cases; a case is a list of steps, each step one thing that
happens (a frame from the server, the socket closing, a client request) and the exact
list of effects it must produce. The format is language-neutral on purpose: the
TypeScript client can replay the same files.

Step keys:
  "server": {...}           a frame from the server (JSON object)
  "server_raw": "..."       a frame sent verbatim (e.g. invalid JSON)
  "close": code | null      the socket closed with that code (null: no close frame)
  "client": "exec" | "stdin" | "kill_process" | "snapshot" | "checkpoint" |
            "terminate" | "reconnect" | "begin_reattach" | "give_up"
                            a client request; its own keys are the call's arguments;
                            "sends" is the frame it must produce, "raises" the
                            exception class name it must raise instead
  "expect": [...]           the effects, in order (default: none). An "error" object
                            only compares the keys it lists.
"""

from __future__ import annotations

import base64
import json
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest

import codesandbox
from codesandbox._errors import SandboxError
from codesandbox._protocol import ClientProtocol, Op, parse_frame

FIXTURES = Path(__file__).parent / "fixtures"


def _cases() -> list[Any]:
    params = []
    for path in sorted(FIXTURES.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        for case in doc["cases"]:
            params.append(pytest.param(case, id=f"{path.stem}:{case['name']}"))
    return params


def _error_dict(error: SandboxError) -> dict[str, Any]:
    return {"class": type(error).__name__, "status": error.status, "message": error.message}


def _effect_dict(effect: Any) -> dict[str, Any]:
    assert is_dataclass(effect)
    out: dict[str, Any] = {"type": type(effect).__name__}
    for f in fields(effect):
        value = getattr(effect, f.name)
        if isinstance(value, SandboxError):
            value = _error_dict(value)
        elif isinstance(value, Op):
            value = value.value
        elif isinstance(value, bytes):
            out["data_b64"] = base64.b64encode(value).decode()
            continue
        out[f.name] = value
    return out


def _matches(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    if set(actual) != set(expected):
        return False
    for key, want in expected.items():
        got = actual[key]
        if key == "error":
            if any(got.get(k) != v for k, v in want.items()):
                return False
        elif got != want:
            return False
    return True


def _check(effects: list[Any], expected: list[dict[str, Any]], where: str) -> None:
    actual = [_effect_dict(e) for e in effects]
    ok = len(actual) == len(expected) and all(_matches(a, e) for a, e in zip(actual, expected))
    assert ok, f"{where}\n  expected: {json.dumps(expected)}\n  actual:   {json.dumps(actual)}"


def _call(proto: ClientProtocol, step: dict[str, Any], state: dict[str, Any]) -> Any:
    name = step["client"]
    if name == "exec":
        execution_id, frame = proto.send_exec(
            step["code"],
            step["language"],
            env=step.get("env"),
            cwd=step.get("cwd"),
            timeout=step.get("timeout"),
            output_encoding=step.get("output_encoding", "text"),
        )
        state["execution_id"] = execution_id
        return frame
    if name == "stdin":
        data: str | bytes | None = step.get("data")
        if "data_b64" in step:
            data = base64.b64decode(step["data_b64"])
        return proto.send_stdin(state.get("execution_id", 0), data, eof=step.get("eof", False))
    if name == "kill_process":
        return proto.send_kill_process(state.get("execution_id", 0))
    if name == "snapshot":
        return proto.send_snapshot(step["name"])
    if name == "checkpoint":
        return proto.send_checkpoint()
    if name == "terminate":
        return proto.send_terminate()
    if name == "reconnect":
        return proto.send_reconnect()
    if name == "begin_reattach":
        proto.begin_reattach()
        return None
    if name == "give_up":
        return proto.give_up(codesandbox.SandboxConnectionError(step.get("message", "gave up")))
    raise AssertionError(f"unknown client call {name!r}")


@pytest.mark.parametrize("case", _cases())
def test_flow(case: dict[str, Any]) -> None:
    proto = ClientProtocol(
        attach=case.get("attach", False), auto_reconnect=case.get("auto_reconnect", False)
    )
    if case.get("attach"):
        proto.sandbox_id = "sb-1"
        proto.sandbox_token = "tok-1"
    state: dict[str, Any] = {}
    for index, step in enumerate(case["steps"]):
        where = f"step {index}: {json.dumps(step)}"
        effects: list[Any] = []
        if "server" in step:
            effects = proto.receive_frame(json.dumps(step["server"]))
        elif "server_raw" in step:
            effects = proto.receive_frame(step["server_raw"])
        elif "close" in step:
            code = step["close"]
            effects = proto.connection_closed(
                code, step.get("reason", ""), close_frame_received=code is not None
            )
        elif "client" in step:
            if "raises" in step:
                with pytest.raises(SandboxError) as info:
                    _call(proto, step, state)
                assert type(info.value).__name__ == step["raises"], where
                continue
            result = _call(proto, step, state)
            if isinstance(result, list):
                effects = result
            elif "sends" in step:
                assert json.loads(result) == step["sends"], where
        else:
            raise AssertionError(f"bad step {where}")
        _check(effects, step.get("expect", []), where)
    if "final_phase" in case:
        assert proto.phase.value == case["final_phase"]


def test_every_fixture_file_has_cases() -> None:
    files = sorted(FIXTURES.glob("*.json"))
    assert files
    for path in files:
        assert json.loads(path.read_text(encoding="utf-8"))["cases"], path


def test_parse_frame_ignores_unknown_and_malformed() -> None:
    assert parse_frame("not json") is None
    assert parse_frame("[1, 2]") is None
    assert parse_frame('{"event": "banana"}') is None
    assert parse_frame('{"event": "status_update"}') is None
    assert parse_frame('{"event": "stdout", "data": 5}') is None
    ev = parse_frame(
        '{"event": "status_update", "status": "SANDBOX_EXECUTION_DONE", "exit_code": true,'
        ' "new_key": 1}'
    )
    assert ev is not None
    assert getattr(ev, "exit_code", "missing") is None


def test_exec_message_keeps_the_core_shape_when_no_additions_are_used() -> None:
    proto = ClientProtocol(attach=False)
    proto.receive_frame('{"event":"status_update","status":"SANDBOX_RUNNING"}')
    _, frame = proto.send_exec("print(1)", "python")
    assert json.loads(frame) == {"language": "python", "code": "print(1)"}
