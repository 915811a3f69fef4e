# SPDX-License-Identifier: GPL-3.0-or-later
"""Find, start and stop the Flamenco Peer on this computer.

A running peer (started by hand, as a service, or by another Blender) is
found through the ``peer.json`` it writes in its data dir, and reused; the
add-on never stops a peer it did not start. Otherwise the add-on starts
``python -m peer run`` as a child process: the peer's code ships in the
add-on (``peer_runtime/``, or the repository when run from a checkout), and
its packages are the wheels Blender installed for the extension.

No bpy here: the caller passes what it knows about Blender.
"""

from __future__ import annotations

import atexit
import importlib.machinery
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

APP_NAME = "flamenco-peer"
DATA_DIR_ENV = "FLAMENCO_PEER_DATA_DIR"
LOG_NAME = "addon-peer.log"
# Import names of the peer's dependencies; py_mini_racer (V8) is optional: a peer
# without it still works as a worker but cannot coordinate.
REQUIRED_MODULES = ("aiohttp", "msgpack", "zeroconf", "platformdirs")
OPTIONAL_MODULES = ("py_mini_racer",)


class PeerStartError(Exception):
    pass


def default_data_dir() -> Path:
    """The peer's default data dir, the same the peer itself uses (peer/config.py)."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    try:
        import platformdirs  # bundled with the add-on; the peer uses it for this too
    except ImportError:
        return _data_dir_without_platformdirs()
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def _data_dir_without_platformdirs() -> Path:
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / APP_NAME
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / APP_NAME
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    return Path(xdg or home / ".local" / "share") / APP_NAME


@dataclass
class RunningPeer:
    url: str
    pid: int
    name: str
    role: str


def read_runtime_file(data_dir: Path) -> dict | None:
    try:
        info = json.loads((data_dir / "peer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("url"), str) else None


def answers(url: str, timeout: float = 1.0) -> bool:
    from .client import opener_for

    try:
        with opener_for(url).open(url.rstrip("/") + "/api/v3/version", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def find_running(data_dir: Path, timeout: float = 1.0) -> RunningPeer | None:
    """The peer whose ``peer.json`` is in ``data_dir``, if it answers (a crashed peer leaves a stale file)."""
    info = read_runtime_file(data_dir)
    if info is None or not answers(info["url"], timeout):
        return None
    return RunningPeer(url=info["url"], pid=int(info.get("pid") or 0), name=str(info.get("name", "")),
                       role=str(info.get("role", "")))


# --- what to run --------------------------------------------------------------


def runtime_root(addon_dir: Path) -> Path | None:
    """The folder holding the ``peer`` package: inside the built add-on, or the repository."""
    for candidate in (addon_dir / "peer_runtime", addon_dir.parent):
        if (candidate / "peer" / "__main__.py").is_file():
            return candidate
    return None


def extension_site_dirs() -> list[str]:
    """Blender's site-packages for extension wheels (``<extensions>/.local/lib/pythonX.Y/site-packages``)."""
    return [p for p in sys.path
            if Path(p).name == "site-packages" and ".local" in Path(p).parts and "extensions" in Path(p).parts]


def module_dirs() -> tuple[list[str], list[str]]:
    """Folders to put on the peer's ``PYTHONPATH`` so it finds its packages, and the missing ones.

    The extension's own wheels (Blender's extension site-packages) come first;
    otherwise a module is taken where Blender's Python finds it (a checkout's venv).
    """
    extension_dirs = extension_site_dirs()
    dirs: list[str] = []
    missing: list[str] = []
    for name in (*REQUIRED_MODULES, *OPTIONAL_MODULES):
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, extension_dirs) if extension_dirs else None
            spec = spec or importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin:
            if name in REQUIRED_MODULES:
                missing.append(name)
            continue
        origin = Path(spec.origin)
        site = origin.parent.parent if origin.name == "__init__.py" else origin.parent
        if str(site) not in dirs:
            dirs.append(str(site))
    # Blender 4.2/4.3 unpack wheels as they are, leaving mini-racer's module in
    # `<dist>.data/purelib/`, where `import` does not look (4.4+ fix this).
    for site in list(dirs):
        for data_dir in sorted(Path(site).glob("*.data")):
            for scheme in ("purelib", "platlib"):
                candidate = data_dir / scheme
                if candidate.is_dir() and str(candidate) not in dirs:
                    dirs.append(str(candidate))
    return dirs, missing


@dataclass
class StartOptions:
    data_dir: Path
    python: str = ""                 # '' = this Python (Blender's own in 4.2+)
    worker: bool = True
    host: str = "127.0.0.1"
    port: int = 0                    # 0 = any free port
    name: str = ""
    join_code: str = ""
    blender: str = ""                # Blender for render tasks; '' = the peer's default
    extra_args: list[str] = field(default_factory=list)


def command(options: StartOptions, root: Path) -> tuple[list[str], dict[str, str]]:
    python = options.python or sys.executable
    args = [python, "-m", "peer", "run", "--data-dir", str(options.data_dir), "--port", str(options.port),
            "--host", options.host]
    if options.name:
        args += ["--name", options.name]
    if not options.worker:
        args.append("--no-worker")
    if options.join_code.strip():
        args += ["--join-code", options.join_code.strip()]
    if options.blender:
        args += ["--blender", options.blender]
    args += options.extra_args
    dirs, missing = module_dirs()
    if missing:
        raise PeerStartError(
            f"the peer's Python packages {', '.join(missing)} are not installed in Blender. Install the add-on "
            "from the zip built for this platform (make addon), which bundles them."
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *dirs, *filter(None, [env.get("PYTHONPATH", "")])])
    env["PYTHONUNBUFFERED"] = "1"
    return args, env


# --- a peer process started here --------------------------------------------------


@dataclass
class PeerProcess:
    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    worker: bool = True
    url: str = ""

    def log_tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> str:
        """The peer's URL once it listens; '' while it starts. Raises if it exited."""
        if self.url:
            return self.url
        if not self.alive():
            raise PeerStartError(
                f"the peer exited with code {self.process.returncode} while starting; its log "
                f"{self.log_path} ends with:\n{self.log_tail()}"
            )
        info = read_runtime_file(self.data_dir)
        if info is not None and info.get("pid") == self.process.pid:
            self.url = info["url"]
        return self.url

    def wait_ready(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return self.url
            time.sleep(0.05)
        raise PeerStartError(f"the peer did not start within {timeout:.0f} s; see {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            if sys.platform == "win32":
                self.process.terminate()
            else:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if sys.platform != "win32":
            # Blender render processes run in the peer's process group: none may outlive it.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def start(options: StartOptions, addon_dir: Path) -> PeerProcess:
    root = runtime_root(addon_dir)
    if root is None:
        raise PeerStartError(
            f"this add-on build has no peer inside ({addon_dir}/peer_runtime is missing). "
            "Install the zip made by `make addon`, or start a peer by hand with `flamenco-peer run`."
        )
    args, env = command(options, root)
    try:
        options.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PeerStartError(f"cannot create the peer's data dir {options.data_dir} ({exc.strerror or exc}); "
                             "choose another one in the add-on preferences") from None
    log_path = options.data_dir / LOG_NAME
    kwargs: dict = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
    else:
        # Its own session: Ctrl-C in Blender's terminal does not reach it, and a
        # peer kept running outlives Blender.
        kwargs["start_new_session"] = True
    with open(log_path, "ab") as log_file:
        try:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                       env=env, cwd=str(options.data_dir), **kwargs)
        except OSError as exc:
            raise PeerStartError(f"cannot run {args[0]} ({exc.strerror or exc}); set the Python used for the "
                                 "peer in the add-on preferences") from None
    return PeerProcess(process=process, data_dir=options.data_dir, log_path=log_path, worker=options.worker)


# --- the one peer this Blender started ---------------------------------------


@dataclass
class _Owned:
    peer: PeerProcess | None = None
    keep_running: bool = False


owned = _Owned()


def stop_owned(*, quitting: bool = False) -> bool:
    """Stop the peer this Blender started; on quit, not if the user asked to keep it. True if stopped."""
    peer = owned.peer
    if peer is None or (quitting and owned.keep_running):
        return False
    owned.peer = None
    peer.stop()
    return True


def _at_exit() -> None:
    stop_owned(quitting=True)


atexit.register(_at_exit)
