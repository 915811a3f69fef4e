"""`move-file` and `delete-files`: the clean-up step after an encode.

`move-file` moves one regular file, also across filesystems (copy, then
delete the source), and never replaces an existing file unless told to.

`delete-files` is deliberately narrow, because a wrong path in a job must
not cost anyone their work. It deletes only:

- paths given literally: absolute, no ".." components, and no wildcard
  expansion ("Film [1080p].mkv" is a file name, not a pattern);
- inside `withinDirectory`, which the job names and which may not be a
  filesystem root. This is checked on the path as written and again on the
  real location of its directory, so a symbolic link in the path cannot lead
  outside;
- regular files and symbolic links (the link itself, never its target).
  Directories, devices, sockets and pipes are refused.

Every path is checked before the first one is deleted, so a bad entry
leaves everything in place. A missing file is logged and skipped by default
(`missingOk`), so a re-run of the task after a partial clean-up succeeds.

These are guards against mistakes in jobs, not against someone racing the
worker on its own disk: a path swapped between the check and the delete is
not defended against.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import params
from . import structured_params as sp
from .base import CommandContext, CommandError, WorkerSettings
from .files import makedirs

MOVE_FILE = "move-file"
DELETE_FILES = "delete-files"

_DIR_MODE = 0o775
_COPY_CHUNK = 1024 * 1024


def _os_reason(ex: OSError) -> str:
    return ex.strerror or str(ex)


def _names_a_directory(path: str) -> bool:
    return path.endswith(("/", os.sep)) or (os.altsep is not None and path.endswith(os.altsep))


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file (a device, socket or pipe)"


@dataclass(frozen=True)
class MoveFile:
    src: str
    dest: str
    overwrite: bool

    async def run(self, ctx: CommandContext) -> None:
        await ctx.log(f'{MOVE_FILE}: moving "{self.src}" to "{self.dest}"')
        copied = await asyncio.to_thread(self._move)
        if copied:
            await ctx.log(f"{MOVE_FILE}: the destination is on another filesystem, so the file was copied "
                          "and the source deleted")

    def _move(self) -> bool:
        """Move; return True if it had to copy across filesystems."""
        self._check()
        try:
            makedirs(os.path.dirname(self.dest), _DIR_MODE)
        except OSError as ex:
            raise self._error(f'cannot create the directory of "{self.dest}": {_os_reason(ex)}') from ex
        try:
            os.replace(self.src, self.dest)
            return False
        except OSError as ex:
            if ex.errno != errno.EXDEV:
                raise self._error(f"{_os_reason(ex)}") from ex
        self._copy_across()
        return True

    def _check(self) -> None:
        try:
            src_mode = os.lstat(self.src).st_mode
        except FileNotFoundError:
            raise CommandError(
                f'{MOVE_FILE}: source "{self.src}" does not exist; check the job\'s paths and that '
                "the previous step produced it"
            ) from None
        if not stat.S_ISREG(src_mode):
            hint = "; use move-directory for directories" if stat.S_ISDIR(src_mode) else ""
            raise CommandError(
                f'{MOVE_FILE}: source "{self.src}" is {_kind(src_mode)}; move-file moves regular files only{hint}'
            )
        self._check_dest()

    def _check_dest(self) -> None:
        try:
            dest_mode = os.lstat(self.dest).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(dest_mode):
            raise CommandError(
                f'{MOVE_FILE}: destination "{self.dest}" is a directory; give the full path of the '
                "file, including its name"
            )
        if not self.overwrite:
            raise CommandError(
                f'{MOVE_FILE}: destination "{self.dest}" already exists; remove it, choose another '
                'destination, or set "overwrite" to true'
            )

    def _copy_across(self) -> None:
        # Copy to a temporary name beside dest, then rename: dest never
        # exists half-written, and the source goes only once dest is complete.
        temp = f"{self.dest}.partial-{secrets.token_hex(4)}"
        try:
            with open(self.src, "rb") as fsrc, open(temp, "xb") as fdst:
                shutil.copyfileobj(fsrc, fdst, _COPY_CHUNK)
            shutil.copystat(self.src, temp)
            self._check_dest()  # again: it may have appeared during the copy
            os.replace(temp, self.dest)
        except BaseException as ex:
            try:
                os.unlink(temp)
            except OSError:
                pass
            if isinstance(ex, OSError):
                raise self._error(f"copying across filesystems failed: {_os_reason(ex)}") from ex
            raise
        try:
            os.unlink(self.src)
        except OSError as ex:
            raise CommandError(
                f'{MOVE_FILE}: copied "{self.src}" to "{self.dest}" but cannot delete the source: '
                f"{_os_reason(ex)}; delete it by hand"
            ) from ex

    def _error(self, reason: str) -> CommandError:
        return CommandError(
            f'{MOVE_FILE}: cannot move "{self.src}" to "{self.dest}": {reason}; check the paths and '
            "that this worker may write to both directories"
        )


def prepare_move_file(raw: Any, settings: WorkerSettings) -> MoveFile:
    p: Mapping[str, Any] = params.require_mapping(MOVE_FILE, raw)
    src = sp.mandatory_absolute_path(MOVE_FILE, p, "src")
    dest = sp.mandatory_absolute_path(MOVE_FILE, p, "dest")
    if _names_a_directory(dest):
        raise params.invalid(
            MOVE_FILE, "dest", dest, "ends in a path separator; give the full path of the file, including its name"
        )
    if sp.same_path(src, dest):
        raise params.invalid(MOVE_FILE, "dest", dest, "is the same path as src")
    return MoveFile(src=src, dest=dest, overwrite=sp.optional_bool(MOVE_FILE, p, "overwrite"))


def _inside(path: str, directory: str) -> bool:
    """`path` is strictly below `directory` (both normalised, absolute)."""
    path, directory = os.path.normcase(path), os.path.normcase(directory)
    try:
        return os.path.commonpath([path, directory]) == directory and path != directory
    except ValueError:  # different drives on Windows
        return False


def _inside_or_same(path: str, directory: str) -> bool:
    return _inside(path, directory) or os.path.normcase(path) == os.path.normcase(directory)


@dataclass(frozen=True)
class DeleteFiles:
    paths: tuple[str, ...]
    within: str
    missing_ok: bool

    async def run(self, ctx: CommandContext) -> None:
        to_delete, missing = await asyncio.to_thread(self._check_all)
        for path in missing:
            await ctx.log(f'{DELETE_FILES}: "{path}" does not exist; nothing to delete')
        for path in to_delete:
            try:
                await asyncio.to_thread(os.unlink, path)
            except FileNotFoundError:
                await ctx.log(f'{DELETE_FILES}: "{path}" disappeared before it was deleted')
                continue
            except OSError as ex:
                raise CommandError(
                    f'{DELETE_FILES}: cannot delete "{path}": {_os_reason(ex)}; check that this worker '
                    "may write to its directory"
                ) from ex
            await ctx.log(f'{DELETE_FILES}: deleted "{path}"')

    def _check_all(self) -> tuple[list[str], list[str]]:
        """Check every path; return (paths to delete, missing paths). Deletes nothing."""
        try:
            real_within = os.path.realpath(self.within, strict=True)
        except OSError as ex:
            raise CommandError(
                f'{DELETE_FILES}: withinDirectory "{self.within}" cannot be used: {_os_reason(ex)}; '
                "check the job's paths"
            ) from None
        if not os.path.isdir(real_within):
            raise CommandError(f'{DELETE_FILES}: withinDirectory "{self.within}" is not a directory')
        to_delete: list[str] = []
        missing: list[str] = []
        for path in self.paths:
            real_parent = os.path.realpath(os.path.dirname(path))
            if not _inside_or_same(real_parent, real_within):
                raise CommandError(
                    f'{DELETE_FILES}: refusing to delete "{path}": its directory is really "{real_parent}" '
                    f'(through a symbolic link), which is outside withinDirectory "{self.within}"; '
                    "nothing was deleted"
                )
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                if not self.missing_ok:
                    raise CommandError(
                        f'{DELETE_FILES}: "{path}" does not exist; check the job\'s paths, or set '
                        '"missingOk" to true; nothing was deleted'
                    ) from None
                missing.append(path)
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise CommandError(
                    f'{DELETE_FILES}: refusing to delete "{path}": it is {_kind(mode)}, and delete-files '
                    "only deletes files; nothing was deleted"
                )
            to_delete.append(path)
        return to_delete, missing


def prepare_delete_files(raw: Any, settings: WorkerSettings) -> DeleteFiles:
    p: Mapping[str, Any] = params.require_mapping(DELETE_FILES, raw)
    within = sp.mandatory_absolute_path(DELETE_FILES, p, "withinDirectory")
    if sp.has_parent_reference(within):
        raise params.invalid(DELETE_FILES, "withinDirectory", within, 'must not contain ".." components')
    within = os.path.normpath(within)
    if os.path.dirname(within) == within:
        raise params.invalid(
            DELETE_FILES, "withinDirectory", within,
            "is the root of a filesystem, which would allow deleting anything; name the job's own directory",
        )
    paths: list[str] = []
    for index, path in enumerate(sp.absolute_path_list(DELETE_FILES, p, "paths")):
        name = f"paths[{index}]"
        if sp.has_parent_reference(path):
            raise params.invalid(DELETE_FILES, name, path, 'must not contain ".." components; write the path out')
        if _names_a_directory(path):
            raise params.invalid(DELETE_FILES, name, path, "names a directory; delete-files only deletes files")
        normal = os.path.normpath(path)
        if not _inside(normal, within):
            raise params.invalid(
                DELETE_FILES, name, path,
                f'is not inside withinDirectory "{within}"; delete-files only deletes files inside it',
            )
        if normal not in paths:
            paths.append(normal)
    return DeleteFiles(
        paths=tuple(paths),
        within=within,
        missing_ok=sp.optional_bool(DELETE_FILES, p, "missingOk", default=True),
    )
