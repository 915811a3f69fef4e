"""Where a peer keeps its files, and its settings file.

A data dir holds:

- ``config.toml``  settings (written with defaults on first run, edited by hand)
- ``peer.sqlite``  the job store (SQLite, WAL)
- ``logs/``        one plain-text log file per task
- ``job_types/``   the user's own job-type scripts (override the built-ins)

Command-line flags override the file; the file overrides the defaults.
"""

from __future__ import annotations

import os
import socket
import tomllib
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import platformdirs

APP_NAME = "flamenco-peer"
DEFAULT_PORT = 8780


def default_data_dir() -> Path:
    override = os.environ.get("FLAMENCO_PEER_DATA_DIR")
    if override:
        return Path(override)
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


@dataclass
class PeerConfig:
    peer_id: str = ""
    name: str = field(default_factory=socket.gethostname)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # Worker side
    worker: bool = True
    blender: str = "blender"
    blender_args: str = "-b -y"
    ffmpeg: str = "ffmpeg"
    enable_exec: bool = False
    task_types: list[str] = field(
        default_factory=lambda: ["blender", "ffmpeg", "file-management", "misc"]
    )
    worker_tags: list[str] = field(default_factory=list)  # a tagged job only goes to workers with its tag
    # When this computer takes tasks (peer/worker/idle, peer/worker/schedule.py)
    worker_mode: str = "always"  # "always", "when-idle" (only while the user is away) or "never"
    idle_threshold_s: float = 300.0  # when-idle: the user counts as away after this long without input
    idle_source: str = "auto"  # auto, x11, windows, macos, cpu or file:PATH (env FLAMENCO_PEER_IDLE_FILE wins)
    finish_task_when_user_returns: bool = False  # when-idle: let the running task finish instead of requeueing it
    sleep_days: str = ""  # sleep schedule: days like "mo tu we th fr" (empty: every day) ...
    sleep_start: str = ""  # ... from this local time ("HH:MM") ...
    sleep_end: str = ""  # ... to this one, the worker takes no tasks
    on_shutdown: str = "requeue"  # on SIGTERM: "requeue" the running task at once, or "finish" it first
    shutdown_grace_s: float = 60.0  # on_shutdown = "finish": longest wait for the task before requeueing it
    prefetch_next_task: bool = True  # while a task runs, claim the next one and fetch its files (if no worker idles)
    # Job files (see docs/files.md)
    store_cap_gb: float = 20.0  # content store size; unused blobs beyond it are collected
    shared_storage: list[str] = field(default_factory=list)  # folders every worker sees at the same path
    # Warm Blender (see docs/warm-blender.md)
    warm_blender: bool = True  # keep one Blender per worker alive between render tasks
    warm_blender_idle_s: float = 120.0  # close it after this long without a task
    warm_blender_max_rss_mb: int = 0  # close it when bigger than this after a task; 0: half the RAM
    # Farm membership
    seeds: list[str] = field(default_factory=list)  # "host:port" of peers to contact when mDNS cannot
    mdns: bool = True  # find peers on the LAN by multicast DNS
    coordinator_priority: int = 0  # among equally up-to-date peers, the highest becomes coordinator
    # Coordinator side
    worker_timeout_s: float = 60.0  # requeue a silent worker's tasks after this long
    task_timeout_s: float = 600.0  # fail (softly) a task that made no progress this long
    task_fail_after_softfail_count: int = 3  # workers that may fail a task before it fails for good
    blocklist_threshold: int = 3  # failures of one worker on one job and task type before it is blocklisted
    job_fail_percentage: int = 10  # a job fails when this percentage of its tasks failed
    compile_timeout_s: float = 5.0
    compile_memory_mb: int = 256

    def toml(self) -> str:
        lines = [
            "# Flamenco Peer settings. Command-line flags override these values.",
            "# Delete a line to go back to its default.",
        ]
        for key, value in asdict(self).items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


class ConfigError(Exception):
    pass


def load_config(data_dir: Path) -> PeerConfig:
    """Read ``config.toml``, creating it (with a new peer id) on first run."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "config.toml"
    config = PeerConfig()
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML ({exc}); fix the line or delete the file to start fresh") from exc
        known = {f.name: f for f in fields(PeerConfig)}
        for key, value in raw.items():
            if key not in known:
                raise ConfigError(
                    f"{path}: unknown setting {key!r}; known settings are: {', '.join(sorted(known))}"
                )
            default = getattr(config, key)
            if isinstance(default, bool) != isinstance(value, bool) or (
                not isinstance(default, bool) and isinstance(default, (int, float)) and not isinstance(value, (int, float))
            ) or (isinstance(default, str) and not isinstance(value, str)) or (
                isinstance(default, list) and not isinstance(value, list)
            ):
                kinds = {bool: "true or false", int: "a whole number", float: "a number", str: "a quoted string",
                         list: "a list like [\"a\", \"b\"]"}
                raise ConfigError(f"{path}: setting {key!r} must be {kinds[type(default)]}, got {value!r}")
            setattr(config, key, value)
    if not config.peer_id:
        config.peer_id = str(uuid.uuid4())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(config.toml(), encoding="utf-8")
        os.replace(tmp, path)
    return config


def config_path(data_dir: Path) -> Path:
    return data_dir / "config.toml"
