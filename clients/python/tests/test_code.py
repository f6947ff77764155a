"""The code interpreter (``run_code`` and code contexts) against a live server at
``SANDBOX_TEST_URL``. Skipped when the variable is unset; every sandbox is terminated when
the test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from codesandbox import Execution, Result, Sandbox, SandboxError, SyncSandbox

from .live import Sandboxes

URL = os.environ.get("SANDBOX_TEST_URL", "")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not URL, reason="SANDBOX_TEST_URL is not set: needs a live server"),
]


@pytest.fixture
async def sandboxes() -> AsyncIterator[Sandboxes]:
    box = Sandboxes(URL)
    try:
        yield box
    finally:
        await box.cleanup()


@pytest.fixture
async def sandbox(sandboxes: Sandboxes) -> Sandbox:
    return await sandboxes.create()


async def test_state_persists_and_the_last_expression_is_the_result(sandbox: Sandbox) -> None:
    first = await sandbox.run_code("x = 40\nprint('set')")
    # Output comes in chunks as the cell writes them (print writes the text, then the newline).
    assert "".join(first.logs.stdout) == "set\n"
    assert first.results == []
    assert first.error is None
    second = await sandbox.run_code("x + 2")
    assert second.text == "42"
    assert second.results[0].is_main_result
    assert second.results[0].formats() == ["text/plain"]
    assert second.exit_code == 0
    assert second.reason == "exited"


async def test_rich_results_table_and_png(sandbox: Sandbox) -> None:
    seen: list[Result] = []
    table = await sandbox.run_code(
        "import pandas as pd\npd.DataFrame({'a': [1, 2]})", on_result=seen.append
    )
    assert table.results[0].html is not None
    assert "<table" in table.results[0].html
    assert seen == table.results
    plot = await sandbox.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    )
    png = plot.results[0].png
    assert png is not None
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot.results[0].is_main_result
    assert plot.text is None


async def test_errors_are_data_with_a_traceback(sandbox: Sandbox) -> None:
    errors = []
    execution = await sandbox.run_code("a = 1\nb = a / 0", on_error=errors.append)
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    assert any("line 2" in line for line in execution.error.traceback)
    assert errors == [execution.error]
    assert execution.exit_code == 1


async def test_streaming_callbacks_and_timeout_interrupt(sandbox: Sandbox) -> None:
    chunks: list[str] = []
    execution = await sandbox.run_code(
        "import time\nkept = 'yes'\nprint('tick', flush=True)\ntime.sleep(30)",
        on_stdout=chunks.append,
        timeout=1,
    )
    # Chunk boundaries are the pipe's (cells run unbuffered: "tick" and "\n" may be two).
    assert "".join(chunks) == "tick\n"
    assert execution.reason == "timeout"
    assert execution.error is not None
    assert execution.error.name == "KeyboardInterrupt"
    assert (await sandbox.run_code("kept")).text == "'yes'"


async def test_contexts_are_isolated_restartable_and_deletable(sandbox: Sandbox) -> None:
    context = await sandbox.create_code_context(cwd="/tmp")
    assert context.cwd == "/tmp"
    await sandbox.run_code("secret = 1")
    other = await sandbox.run_code("import os\nos.getcwd()", context=context)
    assert other.text == "'/tmp'"
    missing = await sandbox.run_code("secret", context)
    assert missing.error is not None
    assert missing.error.name == "NameError"
    died: Execution = await sandbox.run_code("os._exit(1)", context)
    assert died.reason == "context_died"
    listed = {c.context_id: c for c in await sandbox.list_code_contexts()}
    assert listed[context.context_id].state == "dead"
    with pytest.raises(SandboxError, match="died"):
        await sandbox.run_code("1", context)
    await sandbox.restart_code_context(context)
    assert (await sandbox.run_code("2 * 21", context)).text == "42"
    await sandbox.delete_code_context(context.context_id)
    with pytest.raises(SandboxError, match="no code context"):
        await sandbox.run_code("1", context)


async def test_cells_of_one_context_run_in_order(sandbox: Sandbox) -> None:
    slow = asyncio.ensure_future(sandbox.run_code("import time\ntime.sleep(0.5)\norder = [1]"))
    fast = asyncio.ensure_future(sandbox.run_code("order.append(2)\norder"))
    await slow
    assert (await fast).text == "[1, 2]"


def test_sync_api_mirrors_it() -> None:
    with SyncSandbox.create(URL) as sandbox:
        assert sandbox.run_code("y = 3").error is None
        assert sandbox.run_code("y * 2").text == "6"
        context = sandbox.create_code_context()
        assert [c.context_id for c in sandbox.list_code_contexts()].count(context.context_id) == 1
        sandbox.delete_code_context(context)
