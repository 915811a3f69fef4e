"""A job's files in and its outputs out: the glue between jobs and the file layer.

Submission (on the artist's own peer, ``attach_job_files``): when a submitted
job names a ``blendfile`` that exists on this computer and is not on shared
storage, the .blend and its dependencies are packed into this peer's store,
and the job carries ``x_peer_files``: the manifest, this peer's id (the
*owner*), the .blend's path here, and the output root (where the artist wants
the results).

On a worker of another peer (``WorkerJobFiles``), before a task of such a job:

1. the blobs the worker lacks are fetched from the owner or any peer that has
   them, and the job's checkout folder is built from the store;
2. command parameters are rewritten: the owner's .blend path becomes the
   checkout's, and paths under the owner's output root point into this
   worker's staging folder for the job;
3. a task that depends on other tasks (a merge of tiles, a preview video)
   first gets the owner's outputs so far.

After the task, files it produced in the staging folder are queued for the
owner (``OutputShipper``) and, when the owner is reachable, delivered before
the task is reported done (so dependent tasks find them); the owner writes
them under the output root the artist chose. A thumbnail of the last image
goes to the coordinator. If the owner is offline the outputs wait on disk and
are delivered when it returns.

On the owner itself nothing is rewritten or shipped: its paths are real.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Iterable

import aiohttp

from .. import wire
from .checkout import build_checkout
from .manifest import Manifest
from .names import safe_join
from .outputs import OutputRefused, OutputShipper, check_job_id
from .packing import PackError, pack
from .store import ContentStore
from .thumbnails import make_thumbnail, post_last_rendered
from .transfer import Fetcher, FetchReport

log = logging.getLogger(__name__)

JOB_FILES_KEY = "x_peer_files"  # the same key the coordinator accepts in a SubmittedJob
# Commands whose input is what earlier tasks of the job rendered.
COMMANDS_READING_OUTPUTS = frozenset({"frames-to-video"})
# How long a finished task waits for its outputs to reach a reachable owner.
DELIVERY_WAIT_S = 120.0
# Thumbnails are a nicety: a coordinator that does not take one within this is skipped.
THUMBNAIL_POST_TIMEOUT_S = 5.0
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def output_root_of(settings: dict[str, Any]) -> str:
    """Where a job's results go, from the settings Flamenco's job types use."""
    root = settings.get("render_output_root")
    if isinstance(root, str) and root:
        return root
    path = settings.get("render_output_path")
    if isinstance(path, str) and path:
        return str(PurePath(path).parent)
    return ""


class SubmissionError(Exception):
    """The job's files cannot be packed; the message says which and why."""


async def attach_job_files(
    body: Any, *, store: ContentStore, peer_id: str, shared_roots: Iterable[str] = (),
) -> Any:
    """Pack the job's .blend here and describe it in the submission (see the module doc)."""
    if not isinstance(body, dict) or body.get(JOB_FILES_KEY):
        return body
    settings = body.get("settings")
    blend = settings.get("blendfile") if isinstance(settings, dict) else None
    if not isinstance(blend, str) or not blend or "{" in blend:
        return body  # no file, or a path in Flamenco variable form: shared storage
    path = Path(blend)
    if not path.is_absolute() or not path.is_file():
        return body  # not on this computer: the job type or the workers will say so
    try:
        result = await asyncio.to_thread(pack, path, store, shared_roots=list(shared_roots))
    except PackError as exc:
        raise SubmissionError(str(exc)) from None
    if result.manifest is None:
        return body  # on shared storage: every worker sees it where it is
    if result.missing:
        log.warning("job %r: %d referenced files are missing and will be missing on the farm too: %s",
                    body.get("name"), len(result.missing), ", ".join(str(p) for p in result.missing[:5]))
    store.pin(f"submitted:{result.manifest.id}", result.manifest.refs())
    return {**body, JOB_FILES_KEY: {
        "manifest": result.manifest.to_dict(), "owner_peer_id": peer_id, "blend_path": str(path),
        "output_root": output_root_of(settings),
    }}


@dataclass(frozen=True)
class JobFiles:
    manifest: Manifest
    owner_peer_id: str
    blend_path: str
    output_root: str

    @classmethod
    def from_task(cls, task: dict[str, Any]) -> JobFiles | None:
        data = task.get("job_files")
        if not isinstance(data, dict):
            return None
        return cls(Manifest.from_dict(data["manifest"]), str(data["owner_peer_id"]), str(data["blend_path"]),
                   str(data.get("output_root") or ""))


def rewrite_paths(value: Any, replacements: list[tuple[str, str]]) -> Any:
    """Replace path prefixes in every string of a command's parameters (lists and maps too)."""
    if isinstance(value, str):
        for old, new in replacements:
            if value == old:
                return new
            root = old.rstrip("/\\")
            if value.startswith((root + "/", root + "\\")):  # under it, at a folder boundary
                return new + value[len(root):]
        return value
    if isinstance(value, list):
        return [rewrite_paths(v, replacements) for v in value]
    if isinstance(value, dict):
        return {k: rewrite_paths(v, replacements) for k, v in value.items()}
    return value


@dataclass
class PreparedTask:
    commands: list[dict[str, Any]]
    staging: Path | None  # where this worker's outputs of the job go; None: nothing to ship
    started: float
    # Other workers' outputs brought into the staging folder for this task, with
    # their st_mtime_ns: not this task's outputs unless it rewrites them.
    gathered: dict[Path, int] = field(default_factory=dict)


class WorkerJobFiles:
    def __init__(
        self, *, store: ContentStore, session: aiohttp.ClientSession, data_dir: Path, peer_id: str,
        shipper: OutputShipper, peer_url: Callable[[str], str | None], peer_urls: Callable[[], list[str]],
        coordinator_url: Callable[[], str | None], ffmpeg: str = "ffmpeg",
    ) -> None:
        self.store = store
        self.session = session
        self.data_dir = data_dir
        self.peer_id = peer_id
        self.shipper = shipper
        self.peer_url = peer_url
        self.peer_urls = peer_urls
        self.coordinator_url = coordinator_url
        self.ffmpeg = ffmpeg
        self._thumbnail: asyncio.Task[None] | None = None

    def _sources(self, owner_url: str | None) -> list[str]:
        """Peers to fetch from: the owner first, then every other live peer."""
        return [u for u in dict.fromkeys([owner_url, *self.peer_urls()]) if u]

    async def _fetch_job_files(self, files: JobFiles, job_id: str) -> tuple[str | None, FetchReport]:
        """Bring the job's files into the store and pin them there for the job;
        returns the owner's URL (None: not reachable now) and what was fetched."""
        owner_url = self.peer_url(files.owner_peer_id)
        report = await Fetcher(self.store, self.session, self._sources(owner_url), owner=owner_url
                               ).fetch(files.manifest.refs())
        self.store.pin(f"job:{job_id}", files.manifest.refs())
        return owner_url, report

    async def prefetch(self, task: dict[str, Any]) -> int:
        """Bring a task's files into the store ahead of time (the worker runs
        another task meanwhile); ``before_task`` then finds them here. Returns
        the bytes fetched."""
        files = JobFiles.from_task(task)
        if files is None or files.owner_peer_id == self.peer_id:
            return 0
        _, report = await self._fetch_job_files(files, task["job"])
        return report.bytes_received

    async def before_task(self, task: dict[str, Any]) -> PreparedTask:
        commands = task["commands"]
        files = JobFiles.from_task(task)
        if files is None or files.owner_peer_id == self.peer_id:
            return PreparedTask(commands, None, time.time())
        job_id = task["job"]
        owner_url, _ = await self._fetch_job_files(files, job_id)
        checkout = await asyncio.to_thread(build_checkout, files.manifest, self.store,
                                           self.data_dir / "checkouts" / job_id)
        staging = staging_folder(self.data_dir, job_id)
        os.makedirs(staging, exist_ok=True)
        replacements = [(files.blend_path, str(checkout.blend))]
        if files.output_root:
            replacements.append((files.output_root, str(staging)))
        rewritten = [{**c, "parameters": rewrite_paths(c.get("parameters") or {}, replacements)} for c in commands]
        # A task that depends on others (a merge, a preview video) reads what they
        # rendered: bring the owner's outputs so far. Independent tasks (frames,
        # tiles) skip this, or every frame would download all earlier frames.
        reads_outputs = task.get("has_dependencies") or any(c.get("name") in COMMANDS_READING_OUTPUTS for c in commands)
        gathered = {}
        if reads_outputs and files.output_root:
            gathered = await self._fetch_outputs(owner_url, job_id, staging)
        # File times come from the kernel's coarse clock, a tick behind time.time():
        # without the slack, a file written in the task's first milliseconds looks older.
        return PreparedTask(rewritten, staging if files.output_root else None, time.time() - _MTIME_SLACK_S,
                            gathered)

    async def _fetch_outputs(self, owner_url: str | None, job_id: str, staging: Path) -> dict[Path, int]:
        """Bring the job's outputs so far (other workers' frames) into the staging folder:
        from the owner, and from the workers that rendered them, which keep their
        copies; so a preview video is whole even while the owner is away.
        Returns the files written, with their st_mtime_ns."""
        bases = [f"{source.rstrip('/')}/peer/v1/files/outputs/{job_id}" for source in self._sources(owner_url)]
        # All at once: a peer that does not answer must not add its timeout to every other's.
        listings = await asyncio.gather(*(self._list_outputs(base) for base in bases))
        wanted: dict[str, tuple[int, str]] = {}  # rel -> (size, base URL serving it)
        for base, listing in zip(bases, listings):
            for rel, size in listing:
                if rel not in wanted:  # the owner first: its copies are the delivered ones
                    wanted[rel] = (size, base)
        gathered: dict[Path, int] = {}
        for rel, (size, base) in wanted.items():
            target = safe_join(staging, rel)
            if target.is_file() and target.stat().st_size == size:
                continue
            try:
                async with self.session.get(f"{base}/file", params={"path": rel},
                                            timeout=aiohttp.ClientTimeout(total=300, sock_connect=3, sock_read=30)
                                            ) as resp:
                    if resp.status != 200:
                        continue
                    data = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("output %s of job %s could not be fetched from %s: %s", rel, job_id, base, exc)
                continue
            gathered[target] = await asyncio.to_thread(_write_atomically, target, data)
        return gathered

    async def _list_outputs(self, base: str) -> list[tuple[str, int]]:
        try:
            async with self.session.get(f"{base}/list",
                                        timeout=aiohttp.ClientTimeout(total=30, sock_connect=3, sock_read=10)) as resp:
                if resp.status != 200:
                    return []  # not the owner, and no outputs of this job there
                listing = wire.unpack(await resp.read()).get("files", [])
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.info("cannot list outputs at %s: %s", base, exc)
            return []
        return [(str(rel), int(size)) for rel, size in listing]

    async def after_task(self, task: dict[str, Any], prepared: PreparedTask, reported: list[str] | None = None) -> int:
        """Queue what the task produced for the owner; send a thumbnail of its last image.

        ``reported``: the files the task's commands said they saved (Blender's
        ``Saved:`` lines); the thumbnail's source when the outputs stay where
        they are (no files travelled: a local job or shared storage)."""
        if prepared.staging is None:
            self._send_thumbnail(task["job"], [Path(p) for p in reported or ()])
            return 0
        files = JobFiles.from_task(task)
        assert files is not None
        produced = await asyncio.to_thread(_task_outputs, prepared.staging, prepared.started, reported or (),
                                           prepared.gathered)
        for path in produced:
            rel = path.relative_to(prepared.staging).as_posix()
            # Copy, not move: a later task on this worker (a preview video) may read it.
            await self.shipper.enqueue(files.owner_peer_id, task["job"], rel, path, move=False)
        if produced and self.peer_url(files.owner_peer_id):
            # Deliver before the task is reported done, so a task that depends on
            # this one finds the outputs at the owner. An owner that is away gets
            # them later; the outbox keeps them.
            try:
                async with asyncio.timeout(DELIVERY_WAIT_S):
                    await self.shipper.deliver_pending()
            except TimeoutError:
                log.info("outputs of job %s still on their way to its owner", task["job"])
        self._send_thumbnail(task["job"], produced)
        return len(produced)

    def _send_thumbnail(self, job_id: str, outputs: list[Path]) -> None:
        """The dashboard's "last rendered" image of the job (the last image among
        ``outputs``), to the coordinator, in the background: a coordinator that
        was just cut off must not hold up the task's report (the next frame
        brings a newer image anyway)."""
        images = [p for p in outputs if p.suffix.lower() in _IMAGE_SUFFIXES]
        if not images or (self._thumbnail is not None and not self._thumbnail.done()):
            return  # nothing to show, or one on its way: a worker renders faster than thumbnails matter
        image = images[-1]

        async def send() -> None:
            coordinator = self.coordinator_url()
            if not coordinator:
                return
            try:
                jpeg = await make_thumbnail(image, ffmpeg=self.ffmpeg)
                await post_last_rendered(self.session, coordinator, job_id, jpeg, timeout_s=THUMBNAIL_POST_TIMEOUT_S)
            except Exception as exc:  # a missing thumbnail must never fail anything
                log.info("no thumbnail for job %s: %s", job_id, exc)

        self._thumbnail = asyncio.create_task(send(), name=f"thumbnail-{job_id}")

    async def close(self) -> None:
        """Stop a thumbnail still on its way (the worker is leaving)."""
        if self._thumbnail is not None and not self._thumbnail.done():
            self._thumbnail.cancel()
            await asyncio.gather(self._thumbnail, return_exceptions=True)


_MTIME_SLACK_S = 0.05


def staging_folder(data_dir: Path, job_id: str) -> Path:
    """Where a worker keeps its outputs of another peer's job (the task's output root points here)."""
    return data_dir / "job-outputs" / job_id


def worker_outputs_folder(data_dir: Path, job_id: str) -> Path | None:
    """``staging_folder`` for a job this worker has outputs of; None otherwise (or for a bad id)."""
    try:
        folder = staging_folder(data_dir, check_job_id(job_id))
    except OutputRefused:
        return None
    return folder if folder.is_dir() else None


def _task_outputs(staging: Path, since: float, reported: Iterable[str], gathered: dict[Path, int]) -> list[Path]:
    """The files in ``staging`` that a task produced: those written since it
    started (but not the ``gathered`` outputs of other workers, unless it
    rewrote them), and those it reported although they are older. The last
    kind is a frame an interrupted run of the same task wrote before it was
    stopped, which Blender's no-overwrite mode then keeps: it never left this
    worker, and without this nobody would ever deliver it."""
    found = set()
    for path in staging.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            stat = path.stat()
            if stat.st_mtime >= since and gathered.get(path) != stat.st_mtime_ns:
                found.add(path)
        except OSError:
            continue
    root = staging.resolve()
    for text in reported:
        path = Path(text)
        try:
            if path.is_file() and not path.is_symlink() and path.resolve().is_relative_to(root):
                found.add(staging / path.resolve().relative_to(root))
        except OSError:
            continue
    return sorted(found)


def _write_atomically(target: Path, data: bytes) -> int:
    """Returns the file's st_mtime_ns."""
    os.makedirs(target.parent, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target.stat().st_mtime_ns
