"""Share this peer's job-type folder with the farm.

Every few seconds (and right before the coordinator looks job types up, when
this peer coordinates) the scripts in ``<data dir>/job_types`` are sent to the
coordinator, which records them in the replicated log
(``peer.coordinator.shared_job_types``). Adding, editing or removing a script
on any peer thus reaches the whole farm within seconds, and survives a change
of coordinator.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from ..compiler.loader import script_files
from ..coordinator.service import APIError, Coordinator
from ..coordinator.shared_job_types import MAX_SCRIPT_BYTES
from .election import COORDINATOR
from .manager import ClusterManager
from .transport import PeerTransport, PeerUnreachable

log = logging.getLogger(__name__)


def scan_folder(folder: Path, cache: dict[Path, tuple[Any, str]] | None = None) -> dict[str, str]:
    """``{file_name: source}`` of the job-type scripts in ``folder``, found by the
    loader's own rules. ``cache`` (path -> (stat key, source)) spares re-reading
    files that did not change since the last scan."""
    scripts: dict[str, str] = {}
    seen: dict[Path, tuple[Any, str]] = {}
    for path, key in script_files(folder):
        size = key[1]
        if size > MAX_SCRIPT_BYTES:
            log.warning("%s is larger than %d KiB and is not shared with the farm", path, MAX_SCRIPT_BYTES // 1024)
            continue
        cached = cache.get(path) if cache is not None else None
        if cached is not None and cached[0] == key:
            source = cached[1]
        else:
            try:
                source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("cannot share job type %s: %s", path, exc)
                continue
        seen[path] = (key, source)
        scripts[path.name] = source
    if cache is not None:
        cache.clear()
        cache.update(seen)
    return scripts


class JobTypePublisher:
    def __init__(
        self, folder: Path, *, peer_id: str, name: str, cluster: ClusterManager, coordinator: Coordinator,
        transport: PeerTransport, interval_s: float = 2.0,
    ) -> None:
        self.folder = folder
        self.peer_id = peer_id
        self.name = name
        self.cluster = cluster
        self.coordinator = coordinator
        self.transport = transport
        self.interval_s = interval_s
        self._sent: dict[str, str] | None = None
        self._sent_to: str | None = None
        self._lock = asyncio.Lock()
        self._last_problem = ""
        self._read_cache: dict[Path, tuple[Any, str]] = {}

    async def sync(self) -> None:
        """Publish the folder if it changed or the coordinator did."""
        async with self._lock:
            scripts = await asyncio.to_thread(scan_folder, self.folder, self._read_cache)
            url = self.cluster.coordinator_url()
            if url is None or (scripts == self._sent and url == self._sent_to):
                return
            if self.cluster.role == COORDINATOR:
                await self.coordinator.publish_job_types(self.peer_id, self.name, scripts)
            else:
                call = asyncio.ensure_future(self.transport.call(
                    url, "job-types/publish", {"peer_id": self.peer_id, "name": self.name, "scripts": scripts},
                    timeout=10,
                ))
                # Holding the lock on a call to a coordinator that just vanished would
                # delay the new coordinator's job-type lookups (before_job_types).
                while not call.done():
                    await asyncio.wait({call}, timeout=0.2)
                    if not call.done() and self.cluster.coordinator_url() != url:
                        call.cancel()
                        return  # the next sync publishes to the new coordinator
                status, reply = call.result()
                if status != 200:
                    message = (reply or {}).get("message", f"HTTP {status}") if isinstance(reply, dict) else f"HTTP {status}"
                    raise APIError(status, message)
            self._sent, self._sent_to = scripts, url
            self._last_problem = ""

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except (PeerUnreachable, APIError) as exc:
                problem = str(getattr(exc, "message", exc))
                if problem != self._last_problem:  # say it once, not every interval
                    log.warning("cannot share this peer's job types with the farm yet: %s", problem)
                    self._last_problem = problem
            except Exception:
                log.exception("sharing job types failed")
            await asyncio.sleep(self.interval_s)
