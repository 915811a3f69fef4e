"""One peer process: HTTP server, coordinator (when alone) and worker (when enabled)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .api.app import build_app
from .compiler.loader import BUILTIN_JOB_TYPES_DIR, JobTypeRegistry
from .compiler.model import CompileLimits
from .config import PeerConfig, config_path
from .coordinator.service import Coordinator
from .worker.commands.base import WorkerSettings
from .worker.loop import Worker, WorkerIdentity

log = logging.getLogger(__name__)


@dataclass
class NodeOptions:
    data_dir: Path
    config: PeerConfig
    join_url: str | None = None
    worker: bool = True


class PeerNode:
    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        self.config = options.config
        self.coordinator: Coordinator | None = None
        self.worker: Worker | None = None
        self._runner: web.AppRunner | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self.url = ""

    @property
    def role(self) -> str:
        return "coordinator" if self.coordinator else "peer"

    async def start(self) -> None:
        cfg = self.config
        data_dir = self.options.data_dir
        if self.options.join_url is None:
            (data_dir / "job_types").mkdir(parents=True, exist_ok=True)
            registry = JobTypeRegistry([BUILTIN_JOB_TYPES_DIR, data_dir / "job_types"])
            self.coordinator = Coordinator(
                data_dir, registry,
                compile_limits=CompileLimits(
                    timeout_s=cfg.compile_timeout_s, max_memory_bytes=cfg.compile_memory_mb * 1024 * 1024),
                worker_timeout_s=cfg.worker_timeout_s,
            )
            await self.coordinator.start()

        app = build_app(name=cfg.name, coordinator=self.coordinator, forward_to=self.options.join_url)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            if self.coordinator:
                await self.coordinator.stop()
            raise SystemExit(
                f"flamenco-peer: cannot listen on {cfg.host}:{cfg.port} ({exc.strerror}); "
                "another peer may be running there. Stop it, or pick another port with --port N (0 = any free port)."
            ) from None
        port = self._runner.addresses[0][1]
        self.url = f"http://{cfg.host}:{port}"
        self._write_runtime_file(port)

        if self.options.worker:
            coordinator_url = self.options.join_url or self.url
            self.worker = Worker(
                coordinator_url,
                WorkerIdentity(cfg.peer_id, cfg.name, list(cfg.task_types), address=cfg.host),
                WorkerSettings(
                    blender_exe=cfg.blender, ffmpeg_exe=cfg.ffmpeg, enable_exec=cfg.enable_exec,
                    config_hint=f"set blender = \"/path/to/blender\" in {config_path(data_dir)} or pass --blender PATH",
                ),
                variables={"blender": cfg.blender, "blenderArgs": cfg.blender_args},
            )
            self._worker_task = asyncio.create_task(self.worker.run(), name="worker")

    def _write_runtime_file(self, port: int) -> None:
        """Tell local clients (CLI, add-on) where this peer listens."""
        info = {"url": self.url, "port": port, "pid": os.getpid(), "role": self.role, "name": self.config.name}
        path = self.options.data_dir / "peer.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, path)

    async def stop(self) -> None:
        if self._worker_task is not None:
            self._worker_task.cancel()
            try:
                await self._worker_task
            except (asyncio.CancelledError, Exception):
                pass
        if self.coordinator is not None:
            await self.coordinator.begin_shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.coordinator is not None:
            await self.coordinator.stop()
        try:
            (self.options.data_dir / "peer.json").unlink()
        except FileNotFoundError:
            pass

    async def run_forever(self) -> None:
        await self.start()
        what = [self.role]
        if self.worker:
            what.append("worker")
        target = f" joined to {self.options.join_url}" if self.options.join_url else ""
        print(f"flamenco-peer: {self.config.name} listening on {self.url} as {' + '.join(what)}{target}", flush=True)
        print(f"flamenco-peer: data in {self.options.data_dir}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            print("flamenco-peer: stopping", flush=True)
            await self.stop()
