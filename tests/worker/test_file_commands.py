"""make-directory, move-directory and copy-file."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from peer.worker.commands import run_command
from peer.worker.commands.base import CommandError
from peer.worker.commands.files import backup_name

from .conftest import RecordingContext

pytestmark = pytest.mark.timeout(10)

# 2024-03-05 06:07:08 local time, whatever the test machine's time zone.
STAMP_TIME = time.mktime((2024, 3, 5, 6, 7, 8, 0, 0, -1))
STAMP = "2024-03-05_060708"


async def test_make_directory_creates_parents_and_is_idempotent(ctx: RecordingContext, tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    await run_command("make-directory", {"path": str(target)}, ctx)
    await run_command("make-directory", {"path": str(target)}, ctx)
    assert target.is_dir()
    assert ctx.logs == [f'make-directory: creating directory "{target}"'] * 2


async def test_make_directory_over_a_file_fails(ctx: RecordingContext, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(CommandError, match='make-directory: cannot create directory ".*taken": a file with that name exists'):
        await run_command("make-directory", {"path": str(tmp_path / "taken")}, ctx)


async def test_move_directory_simple(ctx: RecordingContext, tmp_path: Path) -> None:
    src, dest = tmp_path / "render-tmp", tmp_path / "render"
    src.mkdir()
    (src / "0001.png").write_text("frame")
    await run_command("move-directory", {"src": str(src), "dest": str(dest)}, ctx)
    assert not src.exists()
    assert (dest / "0001.png").read_text() == "frame"
    assert ctx.logs == [f'move-directory: moving "{src}" to "{dest}"']


async def test_move_directory_keeps_existing_dest_under_its_mtime(ctx: RecordingContext, tmp_path: Path) -> None:
    src, dest = tmp_path / "new", tmp_path / "out"
    src.mkdir()
    dest.mkdir()
    (dest / "old.png").write_text("old")
    os.utime(dest, (STAMP_TIME, STAMP_TIME + 0.4))  # rounds down to :08
    await run_command("move-directory", {"src": str(src), "dest": str(dest)}, ctx)
    backup = tmp_path / f"out-{STAMP}"
    assert (backup / "old.png").read_text() == "old"
    assert dest.is_dir() and not src.exists()
    assert ctx.logs[0] == f'move-directory: "{dest}" exists, moving it to "{backup}"'


async def test_move_directory_numbers_clashing_backups(ctx: RecordingContext, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    (tmp_path / f"out-{STAMP}").mkdir()
    (tmp_path / f"out-{STAMP}-001").mkdir()
    for i in range(2):
        src = tmp_path / f"new{i}"
        src.mkdir()
        dest.mkdir(exist_ok=True)
        os.utime(dest, (STAMP_TIME, STAMP_TIME))
        await run_command("move-directory", {"src": str(src), "dest": str(dest)}, ctx)
    assert (tmp_path / f"out-{STAMP}-002").is_dir()
    assert (tmp_path / f"out-{STAMP}-003").is_dir()


async def test_move_directory_missing_src(ctx: RecordingContext, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match='move-directory: path does not exist: src ".*nope"'):
        await run_command("move-directory", {"src": str(tmp_path / "nope"), "dest": str(tmp_path / "x")}, ctx)


def test_backup_name_rounds_to_the_second() -> None:
    taken = {f"/r/out-{STAMP}"}
    assert backup_name("/r/out", STAMP_TIME + 0.49, lambda p: False) == f"/r/out-{STAMP}"
    assert backup_name("/r/out", STAMP_TIME - 0.5, lambda p: False) == f"/r/out-{STAMP}"
    assert backup_name("/r/out", STAMP_TIME, taken.__contains__) == f"/r/out-{STAMP}-001"


async def test_copy_file_creates_parents(ctx: RecordingContext, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"data" * 1000)
    dest = tmp_path / "deep" / "er" / "out.txt"
    await run_command("copy-file", {"src": str(src), "dest": str(dest)}, ctx)
    assert dest.read_bytes() == src.read_bytes()
    assert ctx.logs == [f'copy-file: copying "{src}" to "{dest}"']
    # New parents are private to the worker's user and group (0750, less the umask).
    assert stat.S_IMODE((tmp_path / "deep").stat().st_mode) & 0o027 == 0


async def test_copy_file_never_overwrites(ctx: RecordingContext, tmp_path: Path) -> None:
    src, dest = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("new")
    dest.write_text("precious")
    with pytest.raises(CommandError) as info:
        await run_command("copy-file", {"src": str(src), "dest": str(dest)}, ctx)
    assert info.value.message == (
        f'copy-file: destination "{dest}" already exists; copy-file never overwrites files, '
        "so remove it first or choose another destination"
    )
    assert dest.read_text() == "precious"


async def test_copy_file_source_problems(ctx: RecordingContext, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match='copy-file: source ".*missing.txt" does not exist'):
        await run_command("copy-file", {"src": str(tmp_path / "missing.txt"), "dest": str(tmp_path / "o")}, ctx)
    with pytest.raises(CommandError, match='copy-file: source ".*" is not a regular file'):
        await run_command("copy-file", {"src": str(tmp_path), "dest": str(tmp_path / "o")}, ctx)
