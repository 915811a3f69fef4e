"""Find job-type scripts on disk and read their ``JOB_TYPE``.

Rules (Flamenco's, see docs/job-types.md for where we differ):
- only ``*.js`` files at the top level of each directory; files under 8 bytes
  are ignored; the job-type name is the file stem with ``_`` turned into ``-``;
- directories are searched in order and a later one overrides an earlier one
  (built-ins first, then the user's directory);
- scripts are re-read when they change on disk, without a restart;
- scripts shared by the farm's peers (``shared``) override all directories.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jsengine import JsSession, format_mib
from .model import CompileError, CompileLimits
from .schema import JobTypeSchemaError, normalize_job_type

_log = logging.getLogger(__name__)

# Running a script's top level only defines things; it should take
# milliseconds.  Tighter than compile limits so a broken script cannot slow
# down every job-type listing much.
LOAD_LIMITS = CompileLimits(timeout_s=2.0, max_memory_bytes=128 * 1024 * 1024)

# Flamenco skips such "tiny files" (e.g. an empty placeholder).
MIN_SCRIPT_BYTES = 8


def _find_builtin_dir() -> Path:
    """``<repo>/job_types`` in a checkout; ``peer/compiler/job_types`` if a
    package build copied the scripts next to this module instead."""
    here = Path(__file__).resolve()
    candidates = (here.parents[2] / "job_types", here.parent / "job_types")
    return next((c for c in candidates if c.is_dir()), candidates[0])


BUILTIN_JOB_TYPES_DIR: Path = _find_builtin_dir()


def job_type_name(file_name: str) -> str:
    """``simple_blender_render.js`` -> ``simple-blender-render``."""
    return Path(file_name).stem.replace("_", "-")


@dataclass(frozen=True)
class JobTypeScript:
    """A loaded job-type script whose ``JOB_TYPE`` is valid."""

    name: str
    path: Path
    source: str
    job_type: dict[str, Any]  # AvailableJobType, with name and etag filled in
    mtime: float

    @property
    def file_name(self) -> str:
        return self.path.name

    @property
    def etag(self) -> str:
        return str(self.job_type["etag"])


@dataclass(frozen=True)
class JobTypeLoadError:
    """A script that could not be loaded; its job type is unavailable."""

    name: str
    path: Path
    message: str


def _unavailable(name: str) -> str:
    return f"job type '{name}' is unavailable until then"


def _load_failure_message(err: CompileError, name: str, limits: CompileLimits) -> str:
    if err.kind == "timeout":
        cause = f"its top level did not finish within {float(limits.timeout_s)} s (infinite loop?)"
    elif err.kind == "memory-limit":
        cause = f"its top level used more than {format_mib(limits.max_memory_bytes)} of memory"
    else:
        cause = err.cause
    location = err.script if err.line is None else f"{err.script}:{err.line}"
    return f"{location}: {cause} — fix the job-type script; {_unavailable(name)}"


def load_job_type_script(path: Path, limits: CompileLimits = LOAD_LIMITS) -> JobTypeScript | JobTypeLoadError:
    """Read and run one script; never raises for problems in the script."""
    name = job_type_name(path.name)
    try:
        mtime = path.stat().st_mtime
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return JobTypeLoadError(name, path, f"{path.name}: the file is not UTF-8 text — save it as UTF-8; {_unavailable(name)}")
    except OSError as exc:
        return JobTypeLoadError(
            name, path, f"{path.name}: cannot read the file ({exc.strerror or exc}) — check its permissions; "
                        f"{_unavailable(name)}")
    return load_job_type_source(path, source, mtime, limits)


def load_job_type_source(
    path: Path, source: str, mtime: float = 0.0, limits: CompileLimits = LOAD_LIMITS,
) -> JobTypeScript | JobTypeLoadError:
    """Run a script's top level and check its ``JOB_TYPE``; ``path`` names it in messages."""
    name = job_type_name(path.name)
    file_name = path.name

    def failed(what: str) -> JobTypeLoadError:
        return JobTypeLoadError(name, path, f"{file_name}: {what}; {_unavailable(name)}")

    try:
        with JsSession(file_name, limits) as session:
            session.run_script(source)
            defined, raw_job_type = session.export_global("JOB_TYPE")
            has_compile = session.eval_host("JSON.stringify(typeof compileJob === 'function')")
            session.messages()  # logs what the top level printed
    except CompileError as err:
        return JobTypeLoadError(name, path, _load_failure_message(err, name, limits))

    if not defined:
        return failed(
            "the script does not define a JOB_TYPE object — add "
            "`const JOB_TYPE = {label: '...', settings: [...]}` at its top level"
        )
    try:
        job_type = normalize_job_type(raw_job_type, name)
    except JobTypeSchemaError as exc:
        return failed(f"{exc} — fix the JOB_TYPE in the script")
    if not has_compile:
        return failed("the script does not define a compileJob(job) function — add one at its top level")
    return JobTypeScript(name=name, path=path, source=source, job_type=job_type, mtime=mtime)


@dataclass(frozen=True)
class SharedScript:
    """A job-type script that is not a file here: one shared by a farm peer.

    ``origin`` says where it came from, e.g. ``farm:workstation-3``; it is
    shown in place of a folder in messages.
    """

    file_name: str
    source: str
    origin: str

    @property
    def path(self) -> Path:
        return Path(self.origin) / self.file_name


_StatKey = tuple[int, int]  # (mtime_ns, size): "has this file changed?"


class JobTypeRegistry:
    """The job types available on this peer, re-read from disk on refresh().

    ``refresh()`` only stats files that did not change, so calling it before
    every listing or compilation (as Flamenco re-reads on every request) is
    cheap.  It blocks while changed scripts run; from async code use
    ``await registry.refresh_async()``.
    """

    def __init__(
        self, dirs: Sequence[Path | str], limits: CompileLimits = LOAD_LIMITS, *,
        shared: Callable[[], list[SharedScript]] | None = None,
    ) -> None:
        """``shared`` lists scripts that override every directory (the farm's
        shared job types); it is called by ``refresh`` on the calling thread."""
        self.dirs = [Path(d) for d in dirs]
        self.limits = limits
        self.shared = shared
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[_StatKey, JobTypeScript | JobTypeLoadError]] = {}
        self._shared_cache: dict[tuple[Path, str], JobTypeScript | JobTypeLoadError] = {}
        self._scripts: dict[str, JobTypeScript] = {}
        self._errors: list[JobTypeLoadError] = []

    @classmethod
    def with_builtins(cls, *user_dirs: Path | str, limits: CompileLimits = LOAD_LIMITS) -> JobTypeRegistry:
        """Built-in job types, overridden by scripts in ``user_dirs``."""
        return cls([BUILTIN_JOB_TYPES_DIR, *user_dirs], limits)

    def refresh(self) -> None:
        with self._lock:
            cache: dict[Path, tuple[_StatKey, JobTypeScript | JobTypeLoadError]] = {}
            scripts: dict[str, JobTypeScript] = {}
            errors: list[JobTypeLoadError] = []
            for directory in self.dirs:
                for path, key in script_files(directory):
                    cached = self._cache.get(path)
                    if cached is not None and cached[0] == key:
                        result = cached[1]
                    else:
                        result = load_job_type_script(path, self.limits)
                        if isinstance(result, JobTypeLoadError):
                            _log.warning("%s", result.message)
                    cache[path] = (key, result)
                    if isinstance(result, JobTypeScript):
                        scripts[result.name] = result
                    else:
                        errors.append(result)
            shared_cache: dict[tuple[Path, str], JobTypeScript | JobTypeLoadError] = {}
            for item in self.shared() if self.shared else []:
                key = (item.path, hashlib.sha1(item.source.encode("utf-8")).hexdigest())
                result = self._shared_cache.get(key)
                if result is None:
                    result = load_job_type_source(item.path, item.source, 0.0, self.limits)
                    if isinstance(result, JobTypeLoadError):
                        _log.warning("%s", result.message)
                shared_cache[key] = result
                if isinstance(result, JobTypeScript):
                    scripts[result.name] = result
                else:
                    errors.append(result)
            self._shared_cache = shared_cache
            self._cache = cache
            self._scripts = dict(sorted(scripts.items()))
            self._errors = [_note_fallback(e, scripts) for e in errors]

    async def refresh_async(self) -> None:
        await asyncio.to_thread(self.refresh)

    def list(self) -> list[JobTypeScript]:
        """Loaded job types, sorted by name (as Flamenco's API lists them)."""
        return list(self._scripts.values())

    def get(self, name: str) -> JobTypeScript | None:
        return self._scripts.get(name)

    def errors(self) -> list[JobTypeLoadError]:
        """Scripts that failed to load, in directory order."""
        return list(self._errors)


def _note_fallback(error: JobTypeLoadError, scripts: dict[str, JobTypeScript]) -> JobTypeLoadError:
    """A broken override leaves the earlier script of that name in use; say so,
    so nobody wonders why their edit has no effect."""
    other = scripts.get(error.name)
    if other is None or other.path == error.path:
        return error
    message = error.message.replace(
        _unavailable(error.name), f"job type '{error.name}' keeps using {other.path} until then"
    )
    return JobTypeLoadError(error.name, error.path, message)


def script_files(directory: Path) -> Iterable[tuple[Path, _StatKey]]:
    """Candidate scripts of one directory, sorted by name, with their stat key
    ``(mtime_ns, size)``. The farm's job-type sharing uses the same rules."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return []  # e.g. a user job-type directory that was never created
    except OSError as exc:
        _log.warning("cannot list job-type directory %s: %s", directory, exc)
        return []
    found: list[tuple[Path, _StatKey]] = []
    for entry in entries:
        # Dot-files are editor/OS leftovers (".#x.js", "._x.js"), not job types.
        if not entry.name.endswith(".js") or entry.name.startswith("."):
            continue
        try:
            if not entry.is_file():
                continue
            st = entry.stat()
        except OSError:
            continue
        if st.st_size < MIN_SCRIPT_BYTES:
            continue
        found.append((Path(entry.path), (st.st_mtime_ns, st.st_size)))
    return found
