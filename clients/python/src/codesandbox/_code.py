"""The code interpreter's results (docs/protocol.md, "Code interpreter"): what
``Sandbox.run_code`` returns, and the code contexts it runs in.

The user's code failing is data (``Execution.error``), not an exception; a context that
cannot take the cell (dead, unknown, too many waiting) raises ``SandboxError``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Callable

from ._results import ExecutionResult

__all__ = ["CodeContext", "Execution", "ExecutionError", "Logs", "Result"]


@dataclass(frozen=True)
class Result:
    """One result of a cell: its trailing expression's value (``is_main_result``), a
    ``display()``, or a figure. ``data`` maps MIME types to values as the server sent
    them; the properties decode the common ones."""

    data: dict[str, Any]
    is_main_result: bool = False

    def formats(self) -> list[str]:
        """The MIME types this result has (``text/plain`` always)."""
        return list(self.data)

    def _text(self, mime: str) -> str | None:
        value = self.data.get(mime)
        return value if isinstance(value, str) else None

    def _binary(self, mime: str) -> bytes | None:
        value = self._text(mime)
        if value is None:
            return None
        try:
            return base64.b64decode(value)
        except (binascii.Error, ValueError):
            return None

    @property
    def text(self) -> str | None:
        return self._text("text/plain")

    @property
    def html(self) -> str | None:
        return self._text("text/html")

    @property
    def markdown(self) -> str | None:
        return self._text("text/markdown")

    @property
    def svg(self) -> str | None:
        return self._text("image/svg+xml")

    @property
    def latex(self) -> str | None:
        return self._text("text/latex")

    @property
    def png(self) -> bytes | None:
        return self._binary("image/png")

    @property
    def jpeg(self) -> bytes | None:
        return self._binary("image/jpeg")

    @property
    def json(self) -> Any:
        return self.data.get("application/json")


@dataclass(frozen=True)
class ExecutionError:
    """The cell's error: the exception's class name, its message, the traceback lines
    (they name the cell as ``<cell-N>`` with its line numbers)."""

    name: str
    value: str
    traceback: list[str]


@dataclass
class Logs:
    """What the cell printed, chunk by chunk as it arrived."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass
class Execution:
    """A cell's outcome: its results, its output, its error (if it raised), and how it
    ended (``exit_code`` 0 or 1; ``reason``: exited, killed, timeout, output_limit,
    context_died)."""

    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    process_id: int | None = None
    exit_code: int | None = None
    reason: str | None = None
    duration_ms: int | None = None

    @property
    def text(self) -> str | None:
        """The main result's text (``None`` if the cell ended without a value)."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None


@dataclass(frozen=True)
class CodeContext:
    """A code context: a Python process with its own globals and working directory.
    ``state`` (from ``list_code_contexts``): idle, busy or dead."""

    context_id: str
    cwd: str
    language: str = "python"
    state: str | None = None
    died: str | None = None

    @staticmethod
    def from_wire(value: Any) -> CodeContext:
        if not isinstance(value, dict):
            raise ValueError(f"not a code context: {value!r}")
        return CodeContext(
            context_id=str(value.get("context_id", "")),
            cwd=str(value.get("cwd", "")),
            language=str(value.get("language", "python")),
            state=value.get("state") if isinstance(value.get("state"), str) else None,
            died=value.get("died") if isinstance(value.get("died"), str) else None,
        )


def context_id_of(context: CodeContext | str | None) -> str | None:
    if context is None or isinstance(context, str):
        return context
    return context.context_id


def result_from_wire(frame: dict[str, Any]) -> Result:
    data = frame.get("data")
    return Result(
        data=data if isinstance(data, dict) else {},
        is_main_result=frame.get("is_main_result") is True,
    )


def error_from_wire(frame: dict[str, Any]) -> ExecutionError:
    traceback = frame.get("traceback")
    return ExecutionError(
        name=str(frame.get("name", "")),
        value=str(frame.get("value", "")),
        traceback=[str(line) for line in traceback] if isinstance(traceback, list) else [],
    )


class CellCollector:
    """Gathers one cell's events into an ``Execution`` and calls the user's callbacks."""

    def __init__(
        self,
        on_stdout: Callable[[str], object] | None,
        on_stderr: Callable[[str], object] | None,
        on_result: Callable[[Result], object] | None,
        on_error: Callable[[ExecutionError], object] | None,
    ) -> None:
        self.execution = Execution()
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._on_result = on_result
        self._on_error = on_error

    def stdout(self, text: str) -> None:
        self.execution.logs.stdout.append(text)
        if self._on_stdout is not None:
            self._on_stdout(text)

    def stderr(self, text: str) -> None:
        self.execution.logs.stderr.append(text)
        if self._on_stderr is not None:
            self._on_stderr(text)

    def event(self, frame: dict[str, Any]) -> None:
        if frame.get("event") == "result":
            result = result_from_wire(frame)
            self.execution.results.append(result)
            if self._on_result is not None:
                self._on_result(result)
        elif frame.get("event") == "execution_error":
            error = error_from_wire(frame)
            self.execution.error = error
            if self._on_error is not None:
                self._on_error(error)

    def finish(self, process_id: int | None, result: ExecutionResult) -> Execution:
        self.execution.process_id = process_id
        self.execution.exit_code = result.exit_code
        self.execution.reason = result.reason
        self.execution.duration_ms = result.duration_ms
        return self.execution
