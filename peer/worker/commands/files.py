"""`make-directory`, `move-directory` and `copy-file`.

Filesystem calls run in a thread: render outputs often live on network
shares, where a single stat can stall long enough to starve the worker's
heartbeats.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import params
from .base import CommandContext, CommandError, WorkerSettings

MAKE_DIRECTORY = "make-directory"
MOVE_DIRECTORY = "move-directory"
COPY_FILE = "copy-file"

_DIR_MODE = 0o775
_COPY_PARENT_MODE = 0o750


def _os_reason(ex: OSError) -> str:
    return ex.strerror or str(ex)


def makedirs(path: str, mode: int) -> None:
    """`mkdir -p` that gives every created directory `mode` (less the umask).

    os.makedirs applies `mode` to the last directory only, which would leave
    intermediate directories with the default 0777-umask permissions.
    """
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise


@dataclass(frozen=True)
class MakeDirectory:
    path: str

    async def run(self, ctx: CommandContext) -> None:
        await ctx.log(f'{MAKE_DIRECTORY}: creating directory "{self.path}"')
        try:
            await asyncio.to_thread(makedirs, self.path, _DIR_MODE)
        except FileExistsError:
            raise CommandError(
                f'{MAKE_DIRECTORY}: cannot create directory "{self.path}": a file with that '
                "name exists; remove it or choose another path"
            ) from None
        except OSError as ex:
            raise CommandError(
                f'{MAKE_DIRECTORY}: cannot create directory "{self.path}": {_os_reason(ex)}; '
                "check that this worker may write there"
            ) from ex


def prepare_make_directory(raw: Any, settings: WorkerSettings) -> MakeDirectory:
    p: Mapping[str, Any] = params.require_mapping(MAKE_DIRECTORY, raw)
    return MakeDirectory(params.mandatory_str(MAKE_DIRECTORY, p, "path"))


def backup_name(dest: str, mtime: float, exists: Any = os.path.lexists) -> str:
    """Where an existing `dest` is moved out of the way: `<dest>-YYYY-MM-DD_HHMMSS[-NNN]`.

    The timestamp is `dest`'s own modification time (rounded to the second,
    local time), so the name says when that old output was made.
    """
    stamp = time.strftime("%Y-%m-%d_%H%M%S", time.localtime(math.floor(mtime + 0.5)))
    base = f"{dest}-{stamp}"
    candidate, n = base, 0
    while exists(candidate):
        n += 1
        candidate = f"{base}-{n:03d}"
    return candidate


@dataclass(frozen=True)
class MoveDirectory:
    src: str
    dest: str

    async def run(self, ctx: CommandContext) -> None:
        src = os.path.normpath(self.src)
        dest = os.path.normpath(self.dest)
        if not await asyncio.to_thread(os.path.lexists, src):
            raise CommandError(
                f'{MOVE_DIRECTORY}: path does not exist: src "{src}"; check the job\'s paths '
                "and that the previous task produced it"
            )
        if await asyncio.to_thread(os.path.lexists, dest):
            mtime = (await asyncio.to_thread(os.lstat, dest)).st_mtime
            backup = backup_name(dest, mtime)
            await ctx.log(f'{MOVE_DIRECTORY}: "{dest}" exists, moving it to "{backup}"')
            await self._rename(dest, backup)
        await ctx.log(f'{MOVE_DIRECTORY}: moving "{src}" to "{dest}"')
        await self._rename(src, dest)

    @staticmethod
    async def _rename(src: str, dest: str) -> None:
        try:
            await asyncio.to_thread(os.rename, src, dest)
        except OSError as ex:
            if ex.errno == errno.EXDEV:
                fix = "both paths must be on the same filesystem, because the move is a rename"
            else:
                fix = "check that the paths are right and this worker may write to both"
            raise CommandError(
                f'{MOVE_DIRECTORY}: cannot move "{src}" to "{dest}": {_os_reason(ex)}; {fix}'
            ) from ex


def prepare_move_directory(raw: Any, settings: WorkerSettings) -> MoveDirectory:
    p: Mapping[str, Any] = params.require_mapping(MOVE_DIRECTORY, raw)
    return MoveDirectory(
        src=params.mandatory_str(MOVE_DIRECTORY, p, "src"),
        dest=params.mandatory_str(MOVE_DIRECTORY, p, "dest"),
    )


@dataclass(frozen=True)
class CopyFile:
    src: str
    dest: str

    async def run(self, ctx: CommandContext) -> None:
        await ctx.log(f'{COPY_FILE}: copying "{self.src}" to "{self.dest}"')
        await asyncio.to_thread(self._copy)

    def _copy(self) -> None:
        if not os.path.exists(self.src):
            raise CommandError(
                f'{COPY_FILE}: source "{self.src}" does not exist; check the job\'s paths'
            )
        if not os.path.isfile(self.src):
            raise CommandError(
                f'{COPY_FILE}: source "{self.src}" is not a regular file; only single files '
                "can be copied"
            )
        if os.path.lexists(self.dest):
            raise CommandError(
                f'{COPY_FILE}: destination "{self.dest}" already exists; copy-file never '
                "overwrites files, so remove it first or choose another destination"
            )
        try:
            makedirs(os.path.dirname(self.dest), _COPY_PARENT_MODE)
            # O_EXCL ('x') closes the gap between the check above and the
            # write: a file appearing meanwhile is still never overwritten.
            with open(self.src, "rb") as fsrc, open(self.dest, "xb") as fdst:
                try:
                    shutil.copyfileobj(fsrc, fdst, 1024 * 1024)
                except BaseException:
                    fdst.close()
                    os.unlink(self.dest)
                    raise
        except FileExistsError:
            raise CommandError(
                f'{COPY_FILE}: destination "{self.dest}" already exists; copy-file never '
                "overwrites files, so remove it first or choose another destination"
            ) from None
        except OSError as ex:
            raise CommandError(
                f'{COPY_FILE}: cannot copy "{self.src}" to "{self.dest}": {_os_reason(ex)}; '
                "check the paths and that this worker may read the source and write the destination"
            ) from ex


def prepare_copy_file(raw: Any, settings: WorkerSettings) -> CopyFile:
    p: Mapping[str, Any] = params.require_mapping(COPY_FILE, raw)
    src = params.mandatory_str(COPY_FILE, p, "src")
    dest = params.mandatory_str(COPY_FILE, p, "dest")
    for name, value in (("src", src), ("dest", dest)):
        if not os.path.isabs(value):
            raise params.invalid(
                COPY_FILE, name, value,
                "must be an absolute path, because a relative one depends on where the worker runs",
            )
    return CopyFile(src=src, dest=dest)


def check_output_file(command: str, output_file: str, overwrite: bool) -> None:
    """Refuse an output path that is a folder, or an existing file unless ``overwrite``."""
    if os.path.isdir(output_file):
        raise CommandError(f'{command}: outputFile "{output_file}" is a directory; give the path of the file to write')
    if not overwrite and os.path.lexists(output_file):
        raise CommandError(
            f'{command}: outputFile "{output_file}" already exists; remove it, choose another '
            'path, or set "overwrite" to true'
        )


def make_output_dir(command: str, output_file: str) -> None:
    """Create the folder of ``output_file``, with a message saying what to do if that fails."""
    out_dir = os.path.dirname(output_file)
    try:
        makedirs(out_dir, 0o775)
    except OSError as ex:
        raise CommandError(
            f'{command}: cannot create the output directory "{out_dir}": {ex.strerror or ex}; '
            "choose an output path this worker can write to"
        ) from ex
