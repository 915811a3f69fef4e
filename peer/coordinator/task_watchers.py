"""The workers waiting to hear that their running task must stop (the ``worker/watch`` long-poll).

Every working worker keeps one such watch open. Each watcher waits on its own
event, filed under its task and its job, so a change wakes only the watchers
it concerns: a farm of N workers pays one wake-up (and one database read) per
task change, not N.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(eq=False)
class TaskWatcher:
    task_id: str
    job_id: str | None = None
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class TaskWatchers:
    def __init__(self) -> None:
        self._by_task: defaultdict[str, set[TaskWatcher]] = defaultdict(set)
        self._by_job: defaultdict[str, set[TaskWatcher]] = defaultdict(set)
        # Bumped by every wake-up: a watcher that learns its job only after reading
        # compares it to what it saw before, so a change of the job in between is not missed.
        self.version = 0

    @contextmanager
    def watching(self, task_id: str) -> Iterator[TaskWatcher]:
        watcher = TaskWatcher(task_id)
        self._by_task[task_id].add(watcher)
        try:
            yield watcher
        finally:
            _discard(self._by_task, task_id, watcher)
            if watcher.job_id is not None:
                _discard(self._by_job, watcher.job_id, watcher)

    def file_under_job(self, watcher: TaskWatcher, job_id: str | None, seen_version: int) -> None:
        """Wake ``watcher`` for changes of ``job_id`` too; ``seen_version``: ``version``
        before the read that found the job (a change since then wakes it at once)."""
        if job_id is not None and watcher.job_id is None:
            watcher.job_id = job_id
            self._by_job[job_id].add(watcher)
        if self.version != seen_version:
            watcher.woken.set()

    def tasks_changed(self, task_ids: Iterable[str]) -> None:
        self.version += 1
        for task_id in task_ids:
            for watcher in self._by_task.get(task_id, ()):
                watcher.woken.set()

    def job_changed(self, job_id: str) -> None:
        self.version += 1
        for watcher in self._by_job.get(job_id, ()):
            watcher.woken.set()

    def wake_all(self) -> None:
        self.version += 1
        for watchers in self._by_task.values():
            for watcher in watchers:
                watcher.woken.set()

    def __len__(self) -> int:
        return sum(len(w) for w in self._by_task.values())


def _discard(index: defaultdict[str, set[TaskWatcher]], key: str, watcher: TaskWatcher) -> None:
    watchers = index.get(key)
    if watchers is not None:
        watchers.discard(watcher)
        if not watchers:
            del index[key]
