"""The exception tree and the status table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import codesandbox
from codesandbox import (
    STATUS_ERRORS,
    SandboxCheckpointError,
    SandboxConnectionError,
    SandboxError,
    SandboxExecutionError,
    SandboxStateError,
    SandboxTimeoutError,
    SandboxUnsupportedLanguageError,
)
from codesandbox._errors import error_from_status

ERRORS_JSON = Path(__file__).resolve().parents[2] / "errors.json"


def _table() -> dict[str, Any]:
    table: dict[str, Any] = json.loads(ERRORS_JSON.read_text(encoding="utf-8"))
    return table


def test_the_status_table_is_clients_errors_json() -> None:
    """One table for both clients: clients/errors.json (the TypeScript suite checks it too)."""
    expected = _table()["statuses"]
    assert {status: cls.__name__ for status, cls in STATUS_ERRORS.items()} == expected


def test_the_class_tree_is_clients_errors_json() -> None:
    classes = _table()["classes"]
    exported = {
        name: getattr(codesandbox, name)
        for name in codesandbox.__all__
        if isinstance(getattr(codesandbox, name), type)
        and issubclass(getattr(codesandbox, name), SandboxError)
    }
    assert set(exported) == set(classes)
    for name, parent in classes.items():
        cls = exported[name]
        sandbox_bases = [b.__name__ for b in cls.__bases__ if issubclass(b, SandboxError)]
        assert sandbox_bases == ([] if parent is None else [parent]), name


def test_the_docs_show_the_table() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "clients.md").read_text(encoding="utf-8")
    for status, name in _table()["statuses"].items():
        row = re.search(rf"`{status}`[^\n]*`{name}`", doc)
        assert row, f"{status} -> {name} is not in docs/clients.md"


def test_mapping_matches_the_protocol_document_when_present() -> None:
    doc = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
    if not doc.exists():
        pytest.skip("docs/protocol.md not found next to the client")
    statuses = set(re.findall(r"`(SANDBOX_[A-Z_]+)`", doc.read_text(encoding="utf-8")))
    documented_errors = {
        s for s in statuses if s.endswith("_ERROR") or s in ("SANDBOX_NOT_FOUND", "SANDBOX_IN_USE")
    }
    assert documented_errors <= set(STATUS_ERRORS)


def test_every_class_is_a_sandbox_error_and_exported() -> None:
    for cls in STATUS_ERRORS.values():
        assert issubclass(cls, SandboxError)
        assert cls.__name__ in codesandbox.__all__


def test_error_carries_status_and_message() -> None:
    err = error_from_status("SANDBOX_CHECKPOINT_ERROR", "checkpointing is not enabled")
    assert isinstance(err, SandboxCheckpointError)
    assert err.message == "checkpointing is not enabled"
    assert err.status == "SANDBOX_CHECKPOINT_ERROR"
    assert str(err) == "checkpointing is not enabled [SANDBOX_CHECKPOINT_ERROR]"


def test_missing_message_gets_a_default() -> None:
    assert error_from_status("SANDBOX_NOT_FOUND", None).message == "sandbox not found"
    assert "SANDBOX_KILL_ERROR" in error_from_status("SANDBOX_KILL_ERROR", None).message


def test_specific_kinds() -> None:
    unsupported = error_from_status("SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR", "x")
    assert isinstance(unsupported, SandboxUnsupportedLanguageError)
    assert isinstance(unsupported, SandboxExecutionError)
    in_progress = error_from_status("SANDBOX_EXECUTION_IN_PROGRESS_ERROR", "x")
    assert isinstance(in_progress, SandboxStateError)


def test_connection_errors_are_builtin_connection_and_timeout_errors() -> None:
    err = SandboxConnectionError("gone", close_code=1006)
    assert isinstance(err, ConnectionError)
    assert isinstance(err, SandboxError)
    assert err.close_code == 1006
    assert str(err) == "gone"
    timeout = SandboxTimeoutError("slow")
    assert isinstance(timeout, TimeoutError)
    assert isinstance(timeout, ConnectionError)
    with pytest.raises(ConnectionError):
        raise SandboxConnectionError("x")


def test_all_is_explicit_and_importable() -> None:
    for name in codesandbox.__all__:
        assert hasattr(codesandbox, name), name


def test_authentication_error_is_its_own_kind() -> None:
    err = codesandbox.SandboxAuthenticationError("refused", http_status=401)
    assert isinstance(err, SandboxError)
    assert not isinstance(err, ConnectionError)  # retrying the same credentials does not help
    assert err.http_status == 401
    assert err.status is None  # not a protocol status
    assert "SandboxAuthenticationError" in codesandbox.__all__
