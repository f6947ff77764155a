"""The sans-IO core on its own: what the flows (tests/flows, through the API) cannot show."""

from __future__ import annotations

import json

import pytest

from codesandbox import SandboxStateError
from codesandbox._effects import ProcessStarted, RequestDone, StdinAcknowledged
from codesandbox._protocol import MAX_STDIN_CHUNK, ClientProtocol


def _running(protocol: int = 2) -> ClientProtocol:
    core = ClientProtocol(attach=False)
    running = {"event": "status_update", "status": "SANDBOX_RUNNING"}
    if protocol == 2:
        running["protocol"] = 2
    core.receive_frame(json.dumps(running))
    return core


def _started(core: ClientProtocol, window: int) -> str:
    key, _ = core.send_exec("cat", "bash")
    core.receive_frame(
        json.dumps(
            {
                "event": "status_update",
                "status": "SANDBOX_EXECUTION_RUNNING",
                "id": key,
                "process_id": 1,
                "stdin_window": window,
            }
        )
    )
    return key


def test_requests_before_the_sandbox_runs_are_state_errors() -> None:
    core = ClientProtocol(attach=False)
    with pytest.raises(SandboxStateError, match="not ready yet"):
        core.send_exec("echo", "bash")
    with pytest.raises(SandboxStateError, match="not ready yet"):
        core.send_checkpoint()


def test_ids_are_a_counter_of_strings() -> None:
    core = _running()
    ids = [core.send_exec("true", "bash")[0] for _ in range(3)]
    assert ids == ["1", "2", "3"]
    assert json.loads(core.send_list_processes()[1])["id"] == "4"


def test_stdin_pieces_follow_the_window_and_chunk_bound() -> None:
    core = _running()
    key = _started(core, window=10)
    data = b"x" * 25
    assert core.next_stdin_piece(key, data, 0, as_text=False) == 10
    core.send_stdin(key, data[:10], as_text=False)
    assert core.stdin_room(key) == 0
    assert core.next_stdin_piece(key, data, 10, as_text=False) == 0
    effects = core.receive_frame(
        json.dumps({"event": "stdin_ack", "id": key, "process_id": 1, "written": 4})
    )
    assert effects == [StdinAcknowledged(key)]
    assert core.stdin_room(key) == 4
    assert core.stdin_unacknowledged(key) == 6
    assert core.next_stdin_piece(key, data, 10, as_text=False) == 0  # 10 > 4: wait for more
    big = _started(core, window=8 * MAX_STDIN_CHUNK)
    assert core.next_stdin_piece(big, b"y" * (3 * MAX_STDIN_CHUNK), 0, as_text=False) == (
        MAX_STDIN_CHUNK
    )


def test_text_pieces_do_not_split_a_character() -> None:
    core = _running()
    key = _started(core, window=4)
    data = "aé€".encode()  # 1 + 2 + 3 bytes
    assert core.next_stdin_piece(key, data, 0, as_text=True) == 3  # "aé", not half of €
    assert core.next_stdin_piece(key, data, 0, as_text=False) == 4


def test_protocol_1_has_no_flow_control() -> None:
    core = _running(protocol=1)
    key, _ = core.send_exec("cat", "bash")
    core.receive_frame('{"event": "status_update", "status": "SANDBOX_EXECUTION_RUNNING"}')
    assert core.stdin_room(key) is None
    frame = json.loads(core.send_stdin(key, b"\xff", as_text=True))  # not UTF-8: base64
    assert frame == {"event": "stdin", "data": "/w==", "encoding": "base64", "id": "2"}


def test_attach_process_takes_the_written_offset_the_server_gives() -> None:
    core = _running()
    request_id, frame = core.send_attach_process(5)
    assert json.loads(frame) == {"action": "attach_process", "process_id": 5, "id": request_id}
    effects = core.receive_frame(
        json.dumps(
            {
                "event": "reply",
                "id": request_id,
                "process_id": 5,
                "stdin_window": 100,
                "stdin_written": 40,
            }
        )
    )
    assert effects == [ProcessStarted(request_id, 5), RequestDone(request_id, request_id)]
    assert core.stdin_room(request_id) == 100
