"""Run blocking store work on one dedicated thread.

SQLite calls block; the event loop must not. A single thread also serialises
every write, which is what the scheduler needs: two workers asking at once can
never be handed the same task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable, TypeVar

T = TypeVar("T")


class DBThread:
    def __init__(self, name: str = "peer-db") -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def run_sync(self, fn: Callable[..., T], *args: object) -> T:
        """For start-up and shutdown code that is not inside the loop yet."""
        return self._executor.submit(fn, *args).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
