"""Run a job-type script's ``compileJob(job)`` and check what it built."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from .jsengine import JsSession
from .model import (
    CompiledCommand,
    CompiledJob,
    CompiledTask,
    CompileError,
    CompileErrorKind,
    CompileLimits,
    CompileRequest,
)

if TYPE_CHECKING:
    from .loader import JobTypeScript


def compile_job(
    script: JobTypeScript, request: CompileRequest, limits: CompileLimits = CompileLimits()
) -> CompiledJob:
    """Compile a submitted job into tasks.  Blocking: call it from a worker
    thread (or use :func:`compile_job_async`).  Raises :class:`CompileError`.

    Like Flamenco, the whole script runs in a fresh context for every job, so
    no state leaks between jobs.  Unlike Flamenco, it is time- and
    memory-limited, and the result is checked before it can be stored.
    """
    with JsSession(script.file_name, limits, created=request.created) as session:
        session.run_script(script.source)
        raw = session.eval_host(
            "__flamencoPeerHost.compile("
            "typeof compileJob === 'function' ? compileJob : undefined, "
            f"{json.dumps(_job_input(request))})"
        )
        messages = session.messages()
    return _ResultReader(script.file_name, messages).job(raw)


async def compile_job_async(
    script: JobTypeScript, request: CompileRequest, limits: CompileLimits = CompileLimits()
) -> CompiledJob:
    """:func:`compile_job` on a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(compile_job, script, request, limits)


def _job_input(request: CompileRequest) -> dict[str, Any]:
    """The data of the JS ``job`` object, with Flamenco's JS member names."""
    return {
        "jobID": request.job_id,
        "name": request.name,
        "jobType": request.job_type,
        "priority": request.priority,
        "createdMillis": request.created.timestamp() * 1000,
        "settings": dict(request.settings),
        "metadata": dict(request.metadata),
        "shamanCheckoutID": request.shaman_checkout_id or "",
        "workerTagUUID": request.worker_tag or "",
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _ResultReader:
    """Checks the JSON the host API returned and builds the dataclasses.

    Every problem here is a bug in the job-type script (it assigned something
    odd to a task or to the job), so messages say what to fix there.
    """

    def __init__(self, script_file: str, messages: list[str]) -> None:
        self.script_file = script_file
        self.messages = messages

    def fail(self, kind: CompileErrorKind, what: str) -> CompileError:
        return CompileError(
            kind,
            f"{self.script_file}: {what} — fix the job-type script and submit again",
            script=self.script_file,
            cause=what,
            messages=self.messages,
        )

    def job(self, raw: dict[str, Any]) -> CompiledJob:
        if raw.get("noCompileFunction"):
            raise self.fail(
                "no-compile-function",
                "the script does not define a compileJob(job) function; "
                "add `function compileJob(job) { ... }` at its top level",
            )
        fields = raw["job"]
        if "invalidResult" in fields:
            raise self.fail("invalid-result", f"the job cannot be converted to JSON ({fields['invalidResult']})")
        name, priority = fields.get("name"), fields.get("priority")
        settings, metadata = fields.get("settings"), fields.get("metadata")
        if not isinstance(name, str):
            raise self.fail("invalid-result", f"job.name must be a string, got {json.dumps(name)}")
        if not _is_int(priority):
            raise self.fail("invalid-result", f"job.priority must be an integer, got {json.dumps(priority)}")
        if not isinstance(settings, dict):
            raise self.fail("invalid-result", f"job.settings must be an object, got {json.dumps(settings)}")
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self.fail("invalid-result", "job.metadata must map names to strings")
        tasks = [self.task(i, t) for i, t in enumerate(raw["tasks"], start=1)]
        self.check_dependencies(tasks, raw["tasks"])
        return CompiledJob(
            name=name,
            priority=priority,
            settings=settings,
            metadata=metadata,
            tasks=tasks,
            messages=self.messages,
        )

    def task(self, index: int, raw: dict[str, Any]) -> CompiledTask:
        name, task_type, priority = raw["name"], raw["type"], raw["priority"]

        def bad(what: str) -> CompileError:
            return self.fail("invalid-result", f"task #{index} ({json.dumps(name)}): {what}")

        if not isinstance(name, str) or not name.strip():
            raise bad("the task name must be a non-empty string")
        if not isinstance(task_type, str) or not task_type.strip():
            raise bad("the task type must be a non-empty string")
        if not _is_int(priority):
            raise bad(f"task.priority must be an integer, got {json.dumps(priority)}")
        commands = []
        for cmd in raw["commands"]:
            params = {} if cmd["parameters"] is None else cmd["parameters"]
            if not isinstance(params, dict):
                raise bad("command parameters must be an object")
            commands.append(CompiledCommand(cmd["name"], params, cmd["totalStepCount"]))
        if any(dep is None for dep in raw["dependencies"]):
            raise bad("task.dependencies holds something that is not a task; use task.addDependency(otherTask)")
        # A repeated addDependency() means the same as one; keep the first.
        deps = list(dict.fromkeys(dep["uUID"] for dep in raw["dependencies"]))
        return CompiledTask(
            uuid=raw["uUID"],
            name=name,
            type=task_type,
            priority=priority,
            commands=commands,
            dependencies=deps,
            index_in_job=index,
        )

    def check_dependencies(self, tasks: list[CompiledTask], raw_tasks: list[dict[str, Any]]) -> None:
        by_uuid: dict[str, CompiledTask] = {}
        for task in tasks:
            if task.uuid in by_uuid:
                raise self.fail(
                    "invalid-result",
                    f"task {json.dumps(task.name)} was added to the job twice (job.addTask with the same task); "
                    "create a new author.Task for every task",
                )
            by_uuid[task.uuid] = task
        for task, raw in zip(tasks, raw_tasks):
            for dep in raw["dependencies"]:
                if dep["uUID"] not in by_uuid:
                    raise self.fail(
                        "unknown-dependency",
                        "a task depends on a task that is not part of this job: "
                        f"task {json.dumps(task.name)} depends on {json.dumps(dep['name'])}, "
                        "which was never passed to job.addTask()",
                    )
        cycle = _find_cycle(tasks, by_uuid)
        if cycle:
            path = " → ".join(json.dumps(t.name) for t in cycle)
            raise self.fail(
                "invalid-result",
                f"tasks depend on each other in a circle ({path}), so none of them could ever start",
            )


def _find_cycle(tasks: list[CompiledTask], by_uuid: dict[str, CompiledTask]) -> list[CompiledTask]:
    """A dependency cycle as a task path that starts and ends at the same task,
    or [] if there is none.  Iterative, so huge jobs cannot hit recursion limits."""
    done: set[str] = set()
    for root in tasks:
        if root.uuid in done:
            continue
        path: list[CompiledTask] = [root]
        on_path = {root.uuid}
        pending = [iter(root.dependencies)]
        while pending:
            dep_uuid = next(pending[-1], None)
            if dep_uuid is None:
                finished = path.pop()
                on_path.discard(finished.uuid)
                done.add(finished.uuid)
                pending.pop()
                continue
            if dep_uuid in on_path:
                start = next(i for i, t in enumerate(path) if t.uuid == dep_uuid)
                return path[start:] + [by_uuid[dep_uuid]]
            if dep_uuid not in done:
                dep = by_uuid[dep_uuid]
                path.append(dep)
                on_path.add(dep_uuid)
                pending.append(iter(dep.dependencies))
    return []
