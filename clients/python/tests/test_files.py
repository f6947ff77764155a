"""``sandbox.files`` against a live server at ``SANDBOX_TEST_URL`` (skipped when unset):
round trips of binary data, listings, errors with their codes, upload and download,
streamed sources, and the sync API."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from codesandbox import Sandbox, SandboxFileError, SyncSandbox

from .live import Sandboxes

URL = os.environ.get("SANDBOX_TEST_URL", "")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not URL, reason="SANDBOX_TEST_URL is not set (a live server)"),
]


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    box = Sandboxes(URL)
    try:
        yield await box.create()
    finally:
        await box.cleanup()


async def test_binary_data_round_trips(sandbox: Sandbox) -> None:
    for size in (0, 1, 64 * 1024 + 1, 5 * 1024 * 1024 + 3):
        data = os.urandom(size)
        assert await sandbox.files.write(f"data-{size}.bin", data) == size
        assert await sandbox.files.read(f"/root/data-{size}.bin") == data
        # The sandbox sees the same bytes.
        result = await sandbox.run(f"sha256sum /root/data-{size}.bin", "bash")
        assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()


async def test_text_streams_and_append(sandbox: Sandbox) -> None:
    await sandbox.files.write("notes.txt", "héllo\n")
    await sandbox.files.write("notes.txt", "more\n", append=True)
    assert await sandbox.files.read_text("notes.txt") == "héllo\nmore\n"

    async def pieces() -> AsyncIterator[bytes]:
        for index in range(3):
            yield bytes([index]) * (700 * 1024)

    assert await sandbox.files.write("async.bin", pieces()) == 3 * 700 * 1024
    assert await sandbox.files.write("file.bin", io.BytesIO(b"x" * 3000), mode=0o600) == 3000
    entry = await sandbox.files.stat("file.bin")
    assert (entry.type, entry.size, entry.mode, entry.path) == (
        "file",
        3000,
        0o600,
        "/root/file.bin",
    )


async def test_directories_listing_rename_remove(sandbox: Sandbox) -> None:
    await sandbox.files.make_dir("tree/a/b")
    await sandbox.files.write("tree/top.txt", b"top")
    await sandbox.files.write("tree/a/b/deep.txt", b"deep")
    names = [entry.name for entry in await sandbox.files.list("tree")]
    assert names == ["a", "top.txt"]
    paths = sorted(entry.path for entry in await sandbox.files.list("/root/tree", depth=3))
    assert paths == [
        "/root/tree/a",
        "/root/tree/a/b",
        "/root/tree/a/b/deep.txt",
        "/root/tree/top.txt",
    ]
    await sandbox.files.rename("tree/top.txt", "tree/moved.txt")
    assert await sandbox.files.exists("tree/moved.txt")
    assert not await sandbox.files.exists("tree/top.txt")
    await sandbox.files.remove("tree", recursive=True)
    assert not await sandbox.files.exists("tree")


async def test_errors_carry_their_code(sandbox: Sandbox) -> None:
    cases = [
        (sandbox.files.read("/root/missing"), "not_found"),
        (sandbox.files.read("/root"), "is_a_directory"),
        (sandbox.files.read("/proc/1/fd/1"), "invalid_path"),
        (sandbox.files.make_dir("/root", parents=False), "already_exists"),
        (sandbox.files.write("/.sandbox/x", b"x"), "permission_denied"),
        (sandbox.files.list("/etc/hostname"), "not_a_directory"),
    ]
    for call, code in cases:
        with pytest.raises(SandboxFileError) as caught:
            await call
        assert caught.value.code == code, caught.value
        assert caught.value.status == "SANDBOX_FILE_ERROR"
    # The session goes on.
    assert (await sandbox.run("echo fine", "bash")).stdout == "fine\n"


async def test_upload_and_download(sandbox: Sandbox, tmp_path: Path) -> None:
    local = tmp_path / "data.csv"
    local.write_bytes(b"a,b\n" + b"1,2\n" * 100_000)
    assert await sandbox.files.upload(local, "data.csv") == local.stat().st_size
    back = tmp_path / "back.csv"
    assert await sandbox.files.download("data.csv", back) == local.stat().st_size
    assert back.read_bytes() == local.read_bytes()


def test_the_sync_api_has_the_same_methods(tmp_path: Path) -> None:
    with SyncSandbox.create(URL) as sandbox:
        sandbox.files.write("sync.txt", "sync")
        assert sandbox.files.read_text("sync.txt") == "sync"
        assert sandbox.files.exists("sync.txt")
        assert [entry.name for entry in sandbox.files.list() if entry.name == "sync.txt"] == [
            "sync.txt"
        ]
        local = tmp_path / "out.txt"
        assert sandbox.files.download("sync.txt", local) == 4
        with pytest.raises(SandboxFileError) as caught:
            sandbox.files.read("nope")
        assert caught.value.code == "not_found"
        sandbox.files.remove("sync.txt")
        sandbox.terminate()
