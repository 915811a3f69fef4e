"""Run blocking store work on one dedicated thread.

SQLite calls block; the event loop must not. A single thread also serialises
every write, which is what the scheduler needs: two workers asking at once can
never be handed the same task.

Group commit: writes submitted with :meth:`DBThread.run_grouped` that queue up
while the thread is busy run together, in order, through one call of their
group function (the store runs them in one SQLite transaction; see
``JobStore.transaction_group``). Under load that turns many small commits into
one, which is where a busy coordinator spent its time. Each write still gets
its own result or exception.

What a group leaves to do after its commit (``GroupDone.then``: the store
writes task-log files there, and creating a file can cost a millisecond) runs
on a second thread, in order, so the next group need not wait for it. A plain
:meth:`DBThread.run` waits until that work is done, so whatever it reads (a log
file, say) is as new as the writes before it; :meth:`DBThread.run_unordered`
skips the wait, for reads of the database alone.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

# Writes taken into one group at most: bounds how long the first of them waits.
MAX_GROUP = 64


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one call came to: its value, or the exception it raised."""

    value: T | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class GroupDone:
    """What a group function returns: one Outcome per item, in order, and
    optionally work that no caller needs to wait for (``then``: the store
    writes task-log files there). ``then`` runs after the callers are
    answered, in order with the ``then`` of other groups, and before any
    later plain ``run``."""

    outcomes: Sequence[Outcome[Any]]
    then: Callable[[], None] | None = None


# A group function gets the items of consecutive grouped calls.
GroupFn = Callable[[Sequence[Any]], GroupDone]


class _Job:
    __slots__ = ("fn", "args", "group", "item", "future", "loop", "ordered")

    def __init__(self, fn: Callable[..., Any] | None, args: tuple[Any, ...], group: GroupFn | None, item: Any,
                 future: asyncio.Future[Any] | concurrent.futures.Future[Any],
                 loop: asyncio.AbstractEventLoop | None, ordered: bool = True) -> None:
        self.fn = fn
        self.args = args
        self.group = group
        self.item = item
        self.future = future
        self.loop = loop
        # Waits for the after-commit work of earlier groups (plain calls only).
        self.ordered = ordered


class DBThread:
    def __init__(self, name: str = "peer-db") -> None:
        self._jobs: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        # Started with the first call, like a ThreadPoolExecutor's.
        self._thread = threading.Thread(target=self._serve, name=f"{name}_0", daemon=True)
        self._after = _AfterCommit(f"{name}-after")
        _live_threads.add(self)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await self._submit(fn, args, None, None)

    async def run_unordered(self, fn: Callable[..., T], *args: object) -> T:
        """``run`` for a read of the database alone: it need not wait for the
        after-commit work of earlier groups (their log files)."""
        return await self._submit(fn, args, None, None, ordered=False)

    async def run_grouped(self, group: GroupFn, item: object) -> Any:
        """Hand ``item`` to ``group`` together with the grouped calls queued
        right after it (same ``group``, nothing else in between)."""
        return await self._submit(None, (), group, item)

    def _submit(self, fn: Callable[..., Any] | None, args: tuple[Any, ...], group: GroupFn | None, item: Any,
                *, ordered: bool = True) -> asyncio.Future[Any]:
        """Queue one call from the running event loop; the future settles there."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._put(_Job(fn, args, group, item, future, loop, ordered))
        return future

    def run_sync(self, fn: Callable[..., T], *args: object) -> T:
        """For start-up and shutdown code that is not inside the loop yet."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._put(_Job(fn, args, None, None, future, None))
        return future.result()

    def shutdown(self) -> None:
        """Finish the queued work, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        self._after.shutdown()

    def _put(self, job: _Job) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("the store's thread is shut down")
            if not self._thread.is_alive():
                self._thread.start()
            self._jobs.append(job)
            self._ready.notify()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if not self._jobs:
                    return
                first = self._jobs.popleft()
                batch = [first]
                if first.group is not None:
                    while (self._jobs and len(batch) < MAX_GROUP and self._jobs[0].group is not None
                           and self._jobs[0].group == first.group):
                        batch.append(self._jobs.popleft())
            # A caller that gave up before its turn (cancelled) gets nothing done.
            batch = [job for job in batch if not job.future.cancelled()]
            if not batch:
                continue
            if first.group is None:
                if first.ordered:
                    self._after.wait_idle()
                _settle(batch, [_call(first.fn, first.args)])
                continue
            done = _call_group(first.group, [job.item for job in batch])
            _settle(batch, done.outcomes)
            if done.then is not None:
                self._after.put(done.then)


class _AfterCommit:
    """The thread that runs groups' after-commit work, one piece after another."""

    def __init__(self, name: str) -> None:
        self._work: collections.deque[Callable[[], None]] = collections.deque()
        self._changed = threading.Condition(threading.Lock())
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def put(self, work: Callable[[], None]) -> None:
        with self._changed:
            if not self._thread.is_alive():
                self._thread.start()
            self._work.append(work)
            self._changed.notify_all()

    def wait_idle(self) -> None:
        """Until every piece of work put so far is done."""
        with self._changed:
            while self._work or self._busy:
                self._changed.wait()

    def shutdown(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def _serve(self) -> None:
        while True:
            with self._changed:
                while not self._work and not self._closed:
                    self._changed.wait()
                if not self._work:
                    return
                work = self._work.popleft()
                self._busy = True
            try:
                work()
            except Exception:  # nobody waits for it: say so in the log
                log.exception("work after a group of writes failed")
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()


def _call(fn: Callable[..., Any] | None, args: tuple[Any, ...]) -> Outcome[Any]:
    assert fn is not None
    try:
        return Outcome(value=fn(*args))
    except BaseException as exc:  # delivered to the caller, like an executor does
        return Outcome(error=exc)


def _call_group(group: GroupFn, items: list[Any]) -> GroupDone:
    try:
        done = group(items)
    except BaseException as exc:  # the group as a whole failed: so did each call
        return GroupDone([Outcome(error=exc)] * len(items))
    if len(done.outcomes) != len(items):
        error = RuntimeError(f"group function returned {len(done.outcomes)} outcomes for {len(items)} calls")
        return GroupDone([Outcome(error=error)] * len(items), done.then)
    return done


def _settle(batch: list[_Job], outcomes: Sequence[Outcome[Any]]) -> None:
    # One wake-up of each event loop for the whole batch, not one per call.
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome[Any]]]] = {}
    for job, outcome in zip(batch, outcomes):
        if job.loop is None:
            sync_future: concurrent.futures.Future[Any] = job.future  # type: ignore[assignment]
            if outcome.error is not None:
                sync_future.set_exception(outcome.error)
            else:
                sync_future.set_result(outcome.value)
        else:
            by_loop.setdefault(job.loop, []).append((job.future, outcome))  # type: ignore[arg-type]
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_in_loop, settled)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _settle_in_loop(settled: list[tuple[asyncio.Future[Any], Outcome[Any]]]) -> None:
    for future, outcome in settled:
        if future.cancelled():
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.value)


# Like a ThreadPoolExecutor: work already queued finishes before the
# interpreter exits, even if nobody called shutdown(). One exit hook for all
# threads; the set holds them weakly, so a dropped DBThread is not kept alive.
_live_threads: weakref.WeakSet[DBThread] = weakref.WeakSet()


@atexit.register
def _shutdown_at_exit() -> None:
    for thread in list(_live_threads):
        thread.shutdown()
