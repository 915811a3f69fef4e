"""``flamenco-peer compile``: turn job settings into tasks on this machine.

A job-type author's dry run: the job-type script runs exactly as a peer would
run it on submission (same loader, same settings check, same V8 limits), but
nothing is stored and no peer needs to be running.  Job types come from the
built-ins, then ``<data dir>/job_types``, then ``--job-types-dir``; a later
folder overrides an earlier one, as on a peer.

Settings are filled in as ``submit`` does it (``peer.settings_eval``): typed
``--set`` values, the job type's defaults, and Blender for the ``eval``
settings when ``--blend`` is given.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .clientlib import ClientError
from .compiler import (
    CompiledJob,
    CompiledTask,
    CompileError,
    CompileLimits,
    CompileRequest,
    JobTypeRegistry,
    JobTypeScript,
    compile_job,
    validate_settings,
)
from .config import ConfigError, load_config
from .settings_eval import SettingsError, evaluate_in_blender, parse_assignments, with_defaults


@dataclass(frozen=True)
class CompileOptions:
    """What the command line asked for."""

    job_type: str
    data_dir: Path
    job_types_dir: Path | None = None
    sets: tuple[str, ...] = ()
    settings_json: str | None = None  # a file name, or "-" for standard input
    blend: str | None = None
    name: str | None = None
    priority: int = 50
    blender: str = "blender"


@dataclass(frozen=True)
class CompileOutcome:
    script: JobTypeScript
    job: CompiledJob


# --- finding the job type ----------------------------------------------------------


def job_type_dirs(data_dir: Path, job_types_dir: Path | None) -> list[Path]:
    """The user's folders, lowest precedence first (the built-ins come before them)."""
    dirs = [data_dir / "job_types"]
    if job_types_dir is not None:
        if not job_types_dir.is_dir():
            raise ClientError(
                f"--job-types-dir {job_types_dir}: no such folder; "
                "give the folder that holds your job-type .js files"
            )
        dirs.append(job_types_dir)
    return dirs


def find_script(registry: JobTypeRegistry, name: str) -> JobTypeScript:
    """The script that defines ``name``, or a ClientError saying why there is none.

    A broken script in a higher-precedence folder is an error even though a
    peer would keep using an earlier script of that name: the author asked
    for *their* job type, and compiling another one would hide the bug.
    """
    broken = [e for e in registry.errors() if e.name == name]
    script = registry.get(name)
    if broken and (script is None or _precedence(registry, broken[-1].path) > _precedence(registry, script.path)):
        raise ClientError(f"job type {name!r} failed to load from {broken[-1].path}: {broken[-1].message}")
    if script is not None:
        return script
    known = ", ".join(s.name for s in registry.list()) or "none"
    searched = ", ".join(str(d) for d in registry.dirs)
    message = f"job type unknown: {name!r}; known job types: {known} (searched {searched})"
    others = registry.errors()
    if others:
        message += "; these scripts failed to load: " + ", ".join(str(e.path) for e in others)
    raise ClientError(message)


def _precedence(registry: JobTypeRegistry, path: Path) -> int:
    parents = [d.resolve() for d in registry.dirs]
    folder = path.parent.resolve()
    return max((i for i, d in enumerate(parents) if d == folder), default=-1)


def compile_limits(data_dir: Path) -> CompileLimits:
    """The data dir's compile limits, so a job that compiles here compiles on that peer."""
    if not (data_dir / "config.toml").is_file():
        return CompileLimits()
    try:
        config = load_config(data_dir)
    except ConfigError as exc:
        raise ClientError(str(exc)) from None
    except OSError as exc:
        raise ClientError(f"cannot read the config in {data_dir} ({exc.strerror or exc})") from None
    return CompileLimits(timeout_s=config.compile_timeout_s, max_memory_bytes=config.compile_memory_mb * 1024 * 1024)


# --- settings -------------------------------------------------------------------


def read_settings_json(source: str, stdin: TextIO) -> dict[str, Any]:
    """The settings object of ``--settings-json FILE`` (``-``: standard input)."""
    where = "standard input" if source == "-" else source
    try:
        text = stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClientError(f"--settings-json {source}: no such file") from None
    except UnicodeDecodeError:
        raise ClientError(f"--settings-json {source}: the file is not UTF-8 text") from None
    except OSError as exc:
        raise ClientError(f"--settings-json {source}: cannot read it ({exc.strerror or exc})") from None
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(
            f"--settings-json: {where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            'write one object, e.g. {"frames": "1-10", "chunk_size": 2}'
        ) from None
    if not isinstance(settings, dict):
        raise ClientError(
            f"--settings-json: {where} holds a JSON {type(settings).__name__}, not an object; "
            'write one object of settings, e.g. {"frames": "1-10", "chunk_size": 2}'
        )
    return settings


def _eval_keys(job_type: dict[str, Any], given: Iterable[str]) -> tuple[list[str], list[str]]:
    """(required, optional) settings that Blender computes and that were not given."""
    given = set(given)
    missing = [s for s in job_type.get("settings", []) if s.get("eval") and s["key"] not in given]
    return [s["key"] for s in missing if s.get("required")], [s["key"] for s in missing if not s.get("required")]


def job_settings(
    script: JobTypeScript, options: CompileOptions, name: str, stdin: TextIO, notes: TextIO
) -> dict[str, Any]:
    """The settings a submission of ``options`` would carry, checked like a peer checks them."""
    job_type = script.job_type
    given: dict[str, Any] = {}
    if options.settings_json is not None:
        given.update(read_settings_json(options.settings_json, stdin))
    try:
        given.update(parse_assignments(list(options.sets), job_type))  # --set wins over the file
    except SettingsError as exc:
        raise ClientError(str(exc)) from None

    declared = [s["key"] for s in job_type.get("settings", [])]
    for key in given:
        if key not in declared:
            print(f"note: job type {script.name!r} declares no setting {key!r} (it has: {', '.join(declared)}); "
                  "the script gets it as given", file=notes)

    blend_path = Path(options.blend).resolve() if options.blend else None
    if blend_path is not None:
        if not blend_path.is_file():
            raise ClientError(f"--blend {options.blend}: no such file")
        if "blendfile" in declared and "blendfile" not in given:
            given["blendfile"] = str(blend_path)
    values = with_defaults(job_type, given)

    required, optional = _eval_keys(job_type, given)
    if blend_path is not None and (required or optional):
        print(f"Evaluating job settings in Blender from {blend_path.name} ...", file=notes)
        try:
            values = evaluate_in_blender(options.blender, blend_path, job_type, name, values, set(given))
        except SettingsError as exc:
            raise ClientError(str(exc)) from None
    elif required:
        raise ClientError(
            f"job type {script.name!r} has settings that Blender computes from the .blend file when the job is "
            f"submitted (their `eval` expression): {', '.join(required + optional)}. Without a .blend file, give "
            f"each with --set KEY=VALUE (or in --settings-json); required: {', '.join(required)}. "
            "Or pass --blend FILE to let Blender compute them now."
        )

    problems = validate_settings(job_type, values)
    if problems:
        raise ClientError(f"invalid settings for job type {script.name!r}: " + "; ".join(problems))
    if blend_path is None and optional:
        # Said after the checks: it matters when the script runs (and maybe fails) without them.
        if len(optional) > 1:
            what = "they keep their defaults (or empty values). Give them"
        else:
            what = "it keeps its default (or an empty value). Give it"
        print(f"note: {', '.join(optional)}: computed in Blender from the .blend file at submission; here {what} "
              "with --set KEY=VALUE, or pass --blend FILE.", file=notes)
    return values


# --- compiling -------------------------------------------------------------------


def compile_locally(options: CompileOptions, *, stdin: TextIO = sys.stdin, notes: TextIO = sys.stderr) -> CompileOutcome:
    """Compile ``options`` as a peer would on submission; raises ClientError with what went wrong."""
    registry = JobTypeRegistry.with_builtins(*job_type_dirs(options.data_dir, options.job_types_dir))
    _quiet_compiler_logs()
    registry.refresh()
    script = find_script(registry, options.job_type)
    limits = compile_limits(options.data_dir)

    name = options.name or (Path(options.blend).stem if options.blend else options.job_type)
    settings = job_settings(script, options, name, stdin, notes)
    request = CompileRequest(
        job_id=str(uuid.uuid4()), name=name, job_type=script.name, priority=options.priority,
        settings=settings, metadata={},
    )
    try:
        job = compile_job(script, request, limits)
    except CompileError as exc:
        for line in exc.messages:
            print(f"script printed: {line}", file=notes)
        raise ClientError(_with_full_path(exc, script)) from None
    return CompileOutcome(script, job)


def _quiet_compiler_logs() -> None:
    """Load failures and the script's alert()s end up in our own messages;
    logging them too would print each twice (unless --log-level asks for more)."""
    if logging.getLogger().isEnabledFor(logging.INFO):
        return
    for name in ("peer.compiler.loader", "peer.compiler.script"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _with_full_path(exc: CompileError, script: JobTypeScript) -> str:
    """Name the script by its path (``/dir/x.js:12: ...``) so an editor can jump there."""
    if exc.message.startswith(script.file_name):
        return str(script.path) + exc.message[len(script.file_name):]
    return f"{exc.message} (script: {script.path})"


# --- output ------------------------------------------------------------------------


def outcome_json(outcome: CompileOutcome) -> dict[str, Any]:
    return {"job_type": outcome.script.name, "script": str(outcome.script.path), **outcome.job.to_dict()}


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _index_ranges(indexes: list[int]) -> str:
    """[1, 2, 3, 5] -> "#1-3, #5"."""
    ranges: list[list[int]] = []
    for i in sorted(indexes):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ", ".join(f"#{a}" if a == b else f"#{a}-{b}" for a, b in ranges)


def format_task(task: CompiledTask, index_of: dict[str, int]) -> list[str]:
    head = f"#{task.index_in_job} {task.name}  ({task.type}, priority {task.priority}"
    if task.dependencies:
        after = _index_ranges([index_of[d] for d in task.dependencies])
        count = len(task.dependencies)
        head += f", after {after}" + (f" ({count} tasks)" if count > 1 else "")
    lines = [head + ")"]
    for cmd in task.commands:
        steps = f" [{cmd.total_step_count} steps]" if cmd.total_step_count > 1 else ""
        params = " ".join(f"{k}={_value(v)}" for k, v in cmd.parameters.items())
        lines.append(f"    {cmd.name}{steps}: {params}".rstrip())
    return lines


def format_outcome(outcome: CompileOutcome) -> str:
    job, script = outcome.job, outcome.script
    steps = sum(t.steps_total for t in job.tasks)
    lines = [
        f"Job {job.name!r} of type {script.name} ({script.path})",
        f"  priority {job.priority}, {len(job.tasks)} tasks, {steps} steps",
        "  settings: " + ", ".join(f"{k}={_value(v)}" for k, v in job.settings.items()),
    ]
    if job.metadata:
        lines.append("  metadata: " + ", ".join(f"{k}={_value(v)}" for k, v in job.metadata.items()))
    lines += [f"  script printed: {m}" for m in job.messages]
    lines.append("")
    index_of = {t.uuid: t.index_in_job for t in job.tasks}
    for task in job.tasks:
        lines += format_task(task, index_of)
    if not job.tasks:
        lines.append("(the script added no tasks)")
    return "\n".join(lines)
