"""One peer process: HTTP server, farm membership, coordinator (when elected) and worker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from . import __version__
from .api.app import build_app
from .cluster import identity as farm_identity
from .cluster.auth import Verifier, auth_middleware, signing_session
from .cluster.discovery import Discovery, DiscoveryError, PeerAdvert, interfaces_for_bind
from .cluster.peer_cache import PeerCache, SeedError, bootstrap_urls, parse_seeds
from .cluster.job_type_sharing import JobTypePublisher
from .cluster.manager import ClusterManager, ClusterSettings
from .cluster.transport import PeerTransport
from .compiler.loader import BUILTIN_JOB_TYPES_DIR, JobTypeRegistry
from .compiler.model import CompileLimits
from .config import PeerConfig, config_path
from .coordinator.service import Coordinator
from .coordinator.status_machine import FailurePolicy
from .worker.commands.base import WorkerSettings
from .worker.idle import policy_from_settings
from .worker.loop import Worker, WorkerIdentity, WorkerOptions
from .worker.upstream import buffer_path
from .worker.warm import WarmBlenderPool, WarmOptions
from .api.app import job_files_packer
from .files.job_io import WorkerJobFiles, attach_job_files, worker_outputs_folder
from .files.outputs import OutputShipper
from .files.routes import add_routes as add_file_routes
from .files.store import ContentStore
from .web.links import dashboard_links

log = logging.getLogger(__name__)


@dataclass
class NodeOptions:
    data_dir: Path
    config: PeerConfig
    join_url: str | None = None  # a seed: another peer of the farm to contact first
    worker: bool = True


class PeerNode:
    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        self.config = options.config
        self.coordinator: Coordinator | None = None
        self.cluster: ClusterManager | None = None
        self.worker: Worker | None = None
        self.identity: farm_identity.FarmIdentity | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self.url = ""
        self._port = 0
        self._ready = False
        self.discovery: Discovery | None = None
        self.peer_cache: PeerCache | None = None
        self._cache_task: asyncio.Task[None] | None = None
        self._publisher_task: asyncio.Task[None] | None = None
        self.publisher: JobTypePublisher | None = None
        self.store: ContentStore | None = None
        self.shipper: OutputShipper | None = None
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def role(self) -> str:
        return self.cluster.role if self.cluster else "starting"

    def _session_factory(self) -> aiohttp.ClientSession:
        assert self.identity is not None
        return signing_session(self.identity, self.config.peer_id, connector=aiohttp.TCPConnector(limit=32))

    async def start(self) -> None:
        cfg = self.config
        data_dir = self.options.data_dir
        self.identity = farm_identity.load_or_create(data_dir)
        (data_dir / "job_types").mkdir(parents=True, exist_ok=True)
        # The farm's job types: built-ins, overridden by what peers share from
        # their own job_types folders (this one's included, see JobTypePublisher).
        registry = JobTypeRegistry([BUILTIN_JOB_TYPES_DIR])
        self.coordinator = Coordinator(
            data_dir, registry,
            compile_limits=CompileLimits(
                timeout_s=cfg.compile_timeout_s, max_memory_bytes=cfg.compile_memory_mb * 1024 * 1024),
            worker_timeout_s=cfg.worker_timeout_s,
            task_timeout_s=cfg.task_timeout_s,
            failure_policy=FailurePolicy(
                task_fail_after_softfail_count=cfg.task_fail_after_softfail_count,
                blocklist_threshold=cfg.blocklist_threshold, job_fail_percentage=cfg.job_fail_percentage,
            ),
            leading=False,
        )
        registry.shared = self.coordinator.shared_job_type_scripts
        await self.coordinator.start()
        self._session = self._session_factory()
        try:
            seeds = parse_seeds([*cfg.seeds, *filter(None, [self.options.join_url])])
        except SeedError as exc:
            await self.coordinator.stop()
            raise SystemExit(f"flamenco-peer: {exc}") from None
        self.peer_cache = PeerCache.in_data_dir(data_dir)
        self.cluster = ClusterManager(
            ClusterSettings(
                peer_id=cfg.peer_id, name=cfg.name, farm_id=self.identity.farm_id, version=__version__,
                priority=cfg.coordinator_priority,
            ),
            self.coordinator, PeerTransport(self._session), seeds=seeds,
            worker_state=self._worker_state, on_role_change=self._role_changed,
        )

        self.store = ContentStore(data_dir / "store", int(cfg.store_cap_gb * 1024 ** 3))
        store, peer_id, shared = self.store, cfg.peer_id, list(cfg.shared_storage)

        async def prepare_submission(body: Any) -> Any:
            return await attach_job_files(body, store=store, peer_id=peer_id, shared_roots=shared)

        app = build_app(
            name=cfg.name, coordinator=self.coordinator, cluster=self.cluster, forward_session=self._session,
            auth=auth_middleware(Verifier(self.identity), accept_session_cookie=True), identity=self.identity,
            packer=job_files_packer(prepare_submission),
        )
        add_file_routes(app, self.store, resolve_output_root=self._output_root,
                        job_files_root=self.coordinator.logs.root,
                        resolve_worker_outputs=lambda job_id: worker_outputs_folder(data_dir, job_id))
        self.shipper = OutputShipper(data_dir / "outbox", self._session, resolve_owner=self._peer_url)
        # Outputs waiting for a peer that just came back go now, not at the next retry.
        shipper = self.shipper
        self.cluster.membership.on_return.append(lambda peer_id: shipper.wake())
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._cleanup()
            raise SystemExit(
                f"flamenco-peer: cannot listen on {cfg.host}:{cfg.port} ({exc.strerror}); "
                "another peer may be running there. Stop it, or pick another port with --port N (0 = any free port)."
            ) from None
        self._port = self._runner.addresses[0][1]
        interfaces = interfaces_for_bind(cfg.host)
        host = cfg.host if cfg.host not in ("0.0.0.0", "", "::", "*") else interfaces[0]
        self.url = f"http://{host}:{self._port}"
        for url in bootstrap_urls([], self.peer_cache, self.identity.farm_id, own_url=self.url):
            self.cluster.membership.add_contact(url, "cache")
        await self.cluster.start(self.url)
        if cfg.mdns:
            await self._start_discovery(interfaces)
        self._cache_task = asyncio.create_task(self._remember_peers(), name="peer-cache")
        self.publisher = JobTypePublisher(
            data_dir / "job_types", peer_id=cfg.peer_id, name=cfg.name, cluster=self.cluster,
            coordinator=self.coordinator, transport=PeerTransport(self._session),
        )
        self.coordinator.before_job_types = self.publisher.sync
        self._publisher_task = asyncio.create_task(self.publisher.run(), name="job-type-sharing")
        self.shipper.start()
        self._ready = True
        self._write_runtime_file()

        if self.options.worker:
            try:
                availability = policy_from_settings(
                    worker_mode=cfg.worker_mode, idle_threshold_s=cfg.idle_threshold_s, idle_source=cfg.idle_source,
                    sleep_days=cfg.sleep_days, sleep_start=cfg.sleep_start, sleep_end=cfg.sleep_end)
                worker_options = WorkerOptions.from_settings(
                    on_shutdown=cfg.on_shutdown, shutdown_grace_s=cfg.shutdown_grace_s,
                    finish_task_when_user_returns=cfg.finish_task_when_user_returns,
                    prefetch=cfg.prefetch_next_task)
            except ValueError as exc:
                await self.stop()
                raise SystemExit(f"flamenco-peer: {exc} (in {config_path(data_dir)})") from None
            self.worker = Worker(
                self.cluster.coordinator_url,
                WorkerIdentity(cfg.peer_id, cfg.name, list(cfg.task_types), address=cfg.host,
                               tags=list(cfg.worker_tags)),
                WorkerSettings(
                    blender_exe=cfg.blender, ffmpeg_exe=cfg.ffmpeg, enable_exec=cfg.enable_exec,
                    config_hint=f"set blender = \"/path/to/blender\" in {config_path(data_dir)} or pass --blender PATH",
                    blender_pool=WarmBlenderPool(WarmOptions(
                        idle_timeout_s=cfg.warm_blender_idle_s, max_rss_mb=cfg.warm_blender_max_rss_mb or None,
                    )) if cfg.warm_blender else None,
                ),
                variables={"blender": cfg.blender, "blenderArgs": cfg.blender_args},
                session_factory=self._session_factory,
                upstream_path=buffer_path(data_dir), availability=availability, options=worker_options,
            )
            self.worker.job_files = WorkerJobFiles(
                store=self.store, session=self._session, data_dir=data_dir, peer_id=cfg.peer_id,
                shipper=self.shipper, peer_url=self._peer_url,
                peer_urls=lambda: [m.url for m in self.cluster.membership.alive() if m.url] if self.cluster else [],
                coordinator_url=self.cluster.coordinator_url, ffmpeg=cfg.ffmpeg,
            )
            self._worker_task = asyncio.create_task(self.worker.run(), name="worker")

    def _peer_url(self, peer_id: str) -> str | None:
        """Where a peer of the farm is reachable now (None: not heard from)."""
        if peer_id == self.config.peer_id:
            return self.url
        if self.cluster is None or not self.cluster.membership.is_alive(peer_id):
            return None
        return self.cluster.membership.members[peer_id].url

    async def _output_root(self, job_id: str) -> Path | None:
        """The folder where outputs of a job submitted here go (None: not ours)."""
        assert self.coordinator is not None
        store = self.coordinator.store
        row = await self.coordinator.db.run(
            lambda: store.read().query_one("SELECT files FROM jobs WHERE id=?", (job_id,)))
        if row is None or not row["files"]:
            return None
        files = json.loads(row["files"])
        if files.get("owner_peer_id") != self.config.peer_id or not files.get("output_root"):
            return None
        return Path(files["output_root"])

    async def _start_discovery(self, interfaces: list[str]) -> None:
        assert self.identity is not None and self.cluster is not None
        cluster = self.cluster

        def found(peer_id: str, advert: PeerAdvert | None) -> None:
            if advert is not None:
                cluster.membership.add_contact(advert.url, "mdns")

        try:
            self.discovery = Discovery(
                farm_id=self.identity.farm_id, peer_id=self.config.peer_id, name=self.config.name,
                port=self._port, interfaces=interfaces, version=__version__, on_change=found,
            )
            await self.discovery.start()
        except (DiscoveryError, OSError) as exc:
            # Seeds and the peer cache still work; say why the LAN is not searched.
            log.warning("mDNS discovery is off: %s; peers are found only through --join/seeds and the cache", exc)
            self.discovery = None

    async def _remember_peers(self) -> None:
        """Keep the last-known peers on disk, for the next start on a network without multicast."""
        assert self.cluster is not None and self.peer_cache is not None and self.identity is not None
        # At once when a peer appears, so a peer killed soon after others joined
        # still finds them on its next start (without multicast the cache is all it has).
        appeared = asyncio.Event()
        self.cluster.membership.on_return.append(lambda peer_id: appeared.set())
        while True:
            try:
                async with asyncio.timeout(5.0):
                    await appeared.wait()
            except TimeoutError:
                pass
            appeared.clear()
            for member in self.cluster.membership.alive():
                self.peer_cache.remember(member.peer_id, member.url, self.identity.farm_id)
            if self.peer_cache.dirty:
                await asyncio.to_thread(self.peer_cache.save)

    def _worker_state(self) -> dict[str, Any] | None:
        if self.worker is None:
            return None
        # state, reason (why it is not working), current_task, tasks_done, mode, buffered_updates, ...
        return {"enabled": True, **self.worker.state()}

    def _role_changed(self) -> None:
        if self._ready:  # before that, start() writes it when everything runs
            self._write_runtime_file()
        if self.discovery is not None and self.cluster is not None:
            task = asyncio.create_task(self.discovery.update(role=self.cluster.role, epoch=self.cluster.epoch))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _write_runtime_file(self) -> None:
        """Tell local clients (CLI, add-on) where this peer listens."""
        info = {"url": self.url, "port": self._port, "pid": os.getpid(), "role": self.role, "name": self.config.name}
        path = self.options.data_dir / "peer.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, path)

    async def _cleanup(self) -> None:
        if self.shipper is not None:
            await self.shipper.close()
        for task in (self._cache_task, self._publisher_task):
            if task is not None:
                task.cancel()
        if self.discovery is not None:
            try:
                await self.discovery.stop()
            except Exception:  # shutting down: nothing to do about it
                log.debug("stopping discovery failed", exc_info=True)
        if self.cluster is not None:
            await self.cluster.stop()
        if self.coordinator is not None:
            await self.coordinator.begin_shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.coordinator is not None:
            await self.coordinator.stop()
        if self._session is not None:
            await self._session.close()

    async def stop(self) -> None:
        if self._worker_task is not None:
            if self.worker is not None:
                # SIGTERM: finish or requeue the task, deliver the buffer, sign
                # off, while the HTTP server and the cluster still run.
                await self.worker.shutdown()
                opts = self.worker.options
                limit = (opts.shutdown_grace_s if opts.on_shutdown == "finish" else 0.0) + opts.delivery_grace_s + 5.0
                done, _ = await asyncio.wait([self._worker_task], timeout=limit)
                if not done:
                    log.warning("the worker did not stop within %.0f s; stopping it now", limit)
            self._worker_task.cancel()
            try:
                await self._worker_task
            except (asyncio.CancelledError, Exception):
                pass
        await self._cleanup()
        try:
            (self.options.data_dir / "peer.json").unlink()
        except FileNotFoundError:
            pass

    async def run_forever(self) -> None:
        await self.start()
        what = ["peer"]
        if self.worker:
            what.append("worker")
        seeds = f", contacting {self.options.join_url}" if self.options.join_url else ""
        assert self.identity is not None
        print(f"flamenco-peer: {self.config.name} listening on {self.url} as {' + '.join(what)}"
              f" in farm {self.identity.name!r}{seeds}", flush=True)
        print(f"flamenco-peer: data in {self.options.data_dir}", flush=True)
        for line in dashboard_links(self.config.host, self._port, self.url).lines():
            print(f"flamenco-peer: {line}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            print("flamenco-peer: stopping", flush=True)
            await self.stop()


