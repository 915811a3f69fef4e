"""Run a job-type script's ``compileJob(job)`` and check what it built."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from typing import TYPE_CHECKING, Any, NoReturn

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
        result = session.eval_host_text(
            "__flamencoPeerHost.compile("
            "typeof compileJob === 'function' ? compileJob : undefined, "
            f"{json.dumps(_job_input(request))})"
        )
        messages = session.messages()
    with _gc_pause:
        return _ResultReader(script.file_name, messages).job(json.loads(result))


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


class _GcPause:
    """Holds off Python's cyclic garbage collector while a result is read.

    Reading a big job makes a few hundred thousand containers (json.loads, then
    the dataclasses), and the collector would scan them again and again as
    they pile up, although none of them can be garbage yet: with it running,
    reading 10,000 tasks took about twice as long.  Shared by threads: the
    collector runs again once the last reader is done, if it ran before.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers = 0
        self._reenable = False

    def __enter__(self) -> None:
        with self._lock:
            if self._readers == 0:
                self._reenable = gc.isenabled()
                gc.disable()
            self._readers += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._readers -= 1
            if self._readers == 0 and self._reenable:
                gc.enable()


_gc_pause = _GcPause()


class _ResultReader:
    """Checks the JSON the host API returned and builds the dataclasses.

    Every problem here is a bug in the job-type script (it assigned something
    odd to a task or to the job), so messages say what to fix there.

    Tasks arrive in the compact form of ``taskSnapshot()`` in host_api.js:
    ``[uUID, name, type, priority, [[name, parameters, totalStepCount], ...],
    [dependency uUID, dependency name, ...]]``, plus a seventh item listing the
    positions of dependencies that are not tasks, if there are any.  Jobs can
    have tens of thousands of tasks, so the common case takes one cheap pass;
    the detailed checks only run to word an error.
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
        raw_tasks = raw["tasks"]
        tasks = self.tasks(raw_tasks)
        self.check_dependencies(tasks, raw_tasks)
        return CompiledJob(
            name=name,
            priority=priority,
            settings=settings,
            metadata=metadata,
            tasks=tasks,
            messages=self.messages,
        )

    def tasks(self, raw_tasks: list[list[Any]]) -> list[CompiledTask]:
        tasks: list[CompiledTask] = []
        add = tasks.append
        for index, raw in enumerate(raw_tasks, start=1):
            if type(raw) is not list or len(raw) != 6:
                self.reject_task(index, raw)  # e.g. some dependency is not a task
            uuid, name, task_type, priority, commands, raw_deps = raw
            # JSON gives exact types: `type(x) is int` is never a bool.
            if not (
                type(name) is str and type(task_type) is str and type(priority) is int
                and name.strip() and task_type.strip()
            ):
                self.reject_task(index, raw)
            # The decoded lists are reused: the commands one is filled with
            # CompiledCommands in place, an empty dependencies one is kept.
            try:
                for position, (command_name, parameters, steps) in enumerate(commands):
                    if type(parameters) is not dict:
                        if parameters is not None:
                            self.reject_task(index, raw)
                        parameters = {}
                    commands[position] = CompiledCommand(command_name, parameters, steps)
            except (TypeError, ValueError):  # an entry that is not [name, parameters, steps]
                self.reject_task(index, raw)
            # A repeated addDependency() means the same as one; keep the first.
            deps = list(dict.fromkeys(raw_deps[::2])) if raw_deps else raw_deps
            add(CompiledTask(uuid, name, task_type, priority, commands, deps, index))
        return tasks

    def reject_task(self, index: int, raw: list[Any]) -> NoReturn:
        """Raise the error for a task that failed the quick checks, with
        the checks in the order a user fixing them one by one would meet them."""
        if not isinstance(raw, list) or len(raw) < 6:
            raise self.fail(
                "invalid-result",
                f"task #{index} did not come out of job.addTask() as a task (got {json.dumps(raw)[:200]}); "
                "was a JavaScript built-in such as Object.prototype.toJSON or JSON.stringify replaced?",
            )
        name, task_type, priority, raw_commands = raw[1:5]

        def bad(what: str) -> CompileError:
            return self.fail("invalid-result", f"task #{index} ({json.dumps(name)}): {what}")

        if not isinstance(name, str) or not name.strip():
            raise bad("the task name must be a non-empty string")
        if not isinstance(task_type, str) or not task_type.strip():
            raise bad("the task type must be a non-empty string")
        if not _is_int(priority):
            raise bad(f"task.priority must be an integer, got {json.dumps(priority)}")
        for command in raw_commands:
            if isinstance(command, CompiledCommand):
                continue  # checked already
            if not isinstance(command, list) or len(command) != 3:
                raise bad("task.commands holds something that is not a command; use task.addCommand(cmd)")
            if command[1] is not None and not isinstance(command[1], dict):
                raise bad("command parameters must be an object")
        raise bad("task.dependencies holds something that is not a task; use task.addDependency(otherTask)")

    def check_dependencies(self, tasks: list[CompiledTask], raw_tasks: list[list[Any]]) -> None:
        position = {task.uuid: i for i, task in enumerate(tasks)}
        if len(position) != len(tasks):
            seen: set[Any] = set()
            for task in tasks:
                if task.uuid in seen:
                    raise self.fail(
                        "invalid-result",
                        f"task {json.dumps(task.name)} was added to the job twice (job.addTask with the same task); "
                        "create a new author.Task for every task",
                    )
                seen.add(task.uuid)
        # Tasks that only depend on tasks added before them cannot form a
        # cycle; that is the usual order, and it is checked on the way.
        maybe_cyclic = False
        for i, task in enumerate(tasks):
            for dep_uuid in task.dependencies:
                dep_position = position.get(dep_uuid)
                if dep_position is None:
                    self.reject_unknown_dependency(task, raw_tasks[i][5], position)
                elif dep_position >= i:
                    maybe_cyclic = True
        if not maybe_cyclic:
            return
        cycle = _find_cycle(tasks, {task.uuid: task for task in tasks})
        if cycle:
            path = " → ".join(json.dumps(t.name) for t in cycle)
            raise self.fail(
                "invalid-result",
                f"tasks depend on each other in a circle ({path}), so none of them could ever start",
            )

    def reject_unknown_dependency(
        self, task: CompiledTask, uuids_and_names: list[Any], known: dict[Any, int]
    ) -> NoReturn:
        """Raise the error for the first dependency of ``task`` that is not in the job."""
        for dep_uuid, dep_name in zip(uuids_and_names[::2], uuids_and_names[1::2]):
            if dep_uuid not in known:
                raise self.fail(
                    "unknown-dependency",
                    "a task depends on a task that is not part of this job: "
                    f"task {json.dumps(task.name)} depends on {json.dumps(dep_name)}, "
                    "which was never passed to job.addTask()",
                )
        raise AssertionError("reject_unknown_dependency() called without an unknown dependency")


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
