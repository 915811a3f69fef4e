"""A throwaway network of Linux network namespaces for multi-host tests.

Why: several peers on one machine need their own IP addresses, a shared
link with working multicast (mDNS) and a way to cut one of them off, but
tests must never send anything onto the host's real network. A lab gives
exactly that and removes every trace of itself afterwards.

Layout of ``NetnsLab(count)`` (names are unique per lab: pid + counter)::

    root namespace (the host)        switch namespace            peer namespaces
    fph<pid><lab>  host_ip  ───veth───  h ─┐
                                            br0 (bridge, no mcast snooping)
                                   p0 ─────┤──veth── eth0  ips[0]   names[0]
                                   p1 ─────┤──veth── eth0  ips[1]   names[1]
                                   ...     ┘

- Every peer namespace has ``lo`` up, ``eth0`` with ``ips[i]`` in a /24
  (``10.<x>.<y>.0/24``, chosen so that it overlaps no address or route of
  the host and no other lab), and a ``224.0.0.0/4`` route on ``eth0`` so
  that even "default interface" multicast works there.
- The bridge lives in its own *switch* namespace, not in the host's: hosts
  that run Docker load ``br_netfilter``, which pushes bridged frames through
  the host's iptables (FORWARD policy DROP) and would silently break
  namespace-to-namespace traffic. A fresh namespace has no such rules.
  ``mcast_snooping 0`` makes the bridge flood multicast to every port, so
  mDNS reaches everyone without IGMP querier games (the recipe measured in
  runtime-facts.md section 2).
- The host gets one veth, ``fph…``, carrying ``host_ip`` (``.254``), so the
  test process itself can talk to the peers (HTTP, TCP) and the peers can
  reach it. Nothing is added to the host's routing besides that /24, and no
  multicast route: the host's real interfaces never see lab traffic.
- ``set_link(i, False)`` takes down namespace i's port on the bridge: its
  packets are dropped silently (no errors, like a pulled cable or a
  partition), and ``set_link(i, True)`` brings it back with addresses and
  routes intact.
- ``close()`` kills the processes it started and anything else still
  running inside its namespaces (only the lab's own tests put them there),
  then deletes the host veth and the namespaces, which takes the bridge and
  every other veth with them. It is idempotent and also registered with
  ``atexit``. Leftovers of labs whose process died (SIGKILL, crash) are
  swept when the next lab is created.

Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2's ``ip``. Tests that
use a lab carry ``@requires_netns``, which skips them with the reason when
namespaces are unavailable. Typical use::

    @requires_netns
    def test_three_hosts():
        with NetnsLab(3) as lab:
            proc = lab.popen(0, [sys.executable, "-c", "..."], stdout=subprocess.PIPE)
            lab.run(1, ["ip", "addr"], check=True)
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

_PREFIX = "fplab"  # namespace names: fplab-<pid>-<lab>-sw and fplab-<pid>-<lab>-<i>
_NAME_RE = re.compile(rf"^{_PREFIX}-(\d+)-(\d+)-(sw|\d+)$")
_PROBE_RE = re.compile(rf"^{_PREFIX}-probe-(\d+)$")
_HOST_VETH_RE = re.compile(r"^fph([0-9a-f]{6})([0-9a-f]+)$")
_HOST_INDEX = 254  # host_ip = 10.x.y.254; namespaces get .1, .2, ...
_MAX_COUNT = 250
_IP_TIMEOUT_S = 10.0

_lab_counter = itertools.count()
_live_labs: dict[int, NetnsLab] = {}  # lab number -> lab, for this process
_registry_lock = threading.Lock()


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, namespace: str | None = None, stdin: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip"] + (["-n", namespace] if namespace else []) + list(args)
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_IP_TIMEOUT_S)
    if check and result.returncode != 0:
        shown = " ".join(argv) + (f" <<< {stdin.strip()!r}" if stdin else "")
        raise NetnsError(f"`{shown}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _ip_batch(lines: list[str], namespace: str | None = None) -> None:
    """Run many ``ip`` commands in one process; stops at the first failure."""
    _ip("-batch", "-", namespace=namespace, stdin="\n".join(lines) + "\n")


@functools.cache
def netns_unavailable_reason() -> str | None:
    """Why network namespace labs cannot run here, or None when they can.

    Tries the real thing once per process (a namespace holding a bridge and
    a veth, deleted right away) because capabilities, seccomp profiles and
    missing kernel modules only show up when you try.
    """
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return ("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); "
                "run the tests as root, as CI does")
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip` command (apt install iproute2)"
    probe = f"{_PREFIX}-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _ip_batch(["link add name br0 type bridge mcast_snooping 0",
                   "link add name a type veth peer name b",
                   "link set dev a master br0",
                   "link set dev br0 up"], namespace=probe)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a bridge and veth pair inside a network namespace: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


requires_netns = pytest.mark.skipif(
    netns_unavailable_reason() is not None,
    reason=f"network namespace lab unavailable: {netns_unavailable_reason()}",
)


def _lock_path() -> Path:
    run_lock = Path("/run/lock")
    base = run_lock if run_lock.is_dir() and os.access(run_lock, os.W_OK) else Path(tempfile.gettempdir())
    return base / "flamenco-peer-netns-lab.lock"


@contextlib.contextmanager
def _global_lock():
    """Serialises subnet choice and stale sweeps between test processes."""
    with open(_lock_path(), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(pid: int, lab: int) -> bool:
    if pid == os.getpid():
        with _registry_lock:
            return lab not in _live_labs
    return not _pid_alive(pid)


def _sweep_stale_labs() -> None:
    """Delete what labs of dead processes left behind (a SIGKILLed pytest)."""
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        match = _NAME_RE.match(name)
        probe = _PROBE_RE.match(name)
        if (match and _is_stale(int(match.group(1)), int(match.group(2)))) or (
                probe and not _pid_alive(int(probe.group(1)))):
            _kill_namespace_processes(name)
            _ip("netns", "del", name, check=False)
    for link in json.loads(_ip("-j", "link", "show", check=False).stdout or "[]"):
        match = _HOST_VETH_RE.match(link.get("ifname", ""))
        if match and _is_stale(int(match.group(1), 16), int(match.group(2), 16)):
            _ip("link", "del", "dev", link["ifname"], check=False)


def _kill_namespace_processes(name: str) -> None:
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host already uses (routes in all tables, addresses)."""
    networks: list[ipaddress.IPv4Network] = []
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]"):
        for addr in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                networks.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return networks


def _pick_subnet(seed: int) -> ipaddress.IPv4Network:
    """A free 10.x.y.0/24, starting from a pid-derived spot to spread labs out."""
    taken = _host_networks()
    slots = 128 * 256  # 10.100.0.0 - 10.227.255.0
    for attempt in range(slots):
        slot = (seed + attempt) % slots
        candidate = ipaddress.IPv4Network(f"10.{100 + slot // 256}.{slot % 256}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise NetnsError("no free 10.x.y.0/24 subnet left on this host for a namespace lab")


def _disable_host_ipv6(ifname: str) -> None:
    # Keeps IPv6 autoconfiguration and host network managers quiet about our veth.
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")


class NetnsLab:
    """``count`` namespaces on one bridge, plus ``host_ip`` for the host. See the module docstring."""

    def __init__(self, count: int) -> None:
        reason = netns_unavailable_reason()
        if reason is not None:
            raise NetnsError(f"network namespace lab unavailable: {reason}")
        if not 1 <= count <= _MAX_COUNT:
            raise ValueError(f"NetnsLab count must be between 1 and {_MAX_COUNT}, got {count}")
        self.count = count
        self.lab_number = next(_lab_counter)
        pid = os.getpid()
        base = f"{_PREFIX}-{pid}-{self.lab_number}"
        self.switch = f"{base}-sw"
        self.names: list[str] = [f"{base}-{i}" for i in range(count)]
        self.host_veth = f"fph{pid:06x}{self.lab_number:02x}"
        self.host_ip = ""
        self.ips: list[str] = []
        self.prefix_len = 24
        self._processes: list[tuple[subprocess.Popen[Any], bool]] = []  # (process, leads its own group)
        self._closed = False
        self._close_lock = threading.Lock()
        with _registry_lock:
            _live_labs[self.lab_number] = self
        atexit.register(self.close)
        try:
            self._build(seed=pid * 7 + self.lab_number)
        except BaseException:
            self.close()
            raise

    def _build(self, seed: int) -> None:
        with _global_lock():
            _sweep_stale_labs()
            subnet = _pick_subnet(seed)
            hosts = list(subnet.hosts())
            self.ips = [str(hosts[i]) for i in range(self.count)]
            self.host_ip = str(hosts[_HOST_INDEX - 1])
            lines = [f"netns add {self.switch}"]
            lines += [f"netns add {name}" for name in self.names]
            lines.append(f"link add name br0 netns {self.switch} type bridge mcast_snooping 0")
            lines.append(f"link add name {self.host_veth} type veth peer name h netns {self.switch}")
            lines += [f"link add name p{i} netns {self.switch} type veth peer name eth0 netns {name}"
                      for i, name in enumerate(self.names)]
            _ip_batch(lines)
            _disable_host_ipv6(self.host_veth)
            _ip_batch([f"addr add {self.host_ip}/{self.prefix_len} dev {self.host_veth}",
                       f"link set dev {self.host_veth} up"])
        switch_lines = ["link set dev lo up", "link set dev br0 up", "link set dev h master br0", "link set dev h up"]
        for i in range(self.count):
            switch_lines += [f"link set dev p{i} master br0", f"link set dev p{i} up"]
        _ip_batch(switch_lines, namespace=self.switch)
        for name, ip in zip(self.names, self.ips):
            _ip_batch(["link set dev lo up",
                       f"addr add {ip}/{self.prefix_len} dev eth0",
                       "link set dev eth0 up",
                       "route add 224.0.0.0/4 dev eth0"], namespace=name)

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetnsLab(names={self.names}, ips={self.ips}, host_ip={self.host_ip!r})"

    def exec_argv(self, index: int, argv: list[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside namespace ``index`` (for asyncio subprocesses).

        Processes started this way are not tracked, but ``close()`` still kills them.
        """
        self._check_open()
        return ["ip", "netns", "exec", self.names[index], *argv]

    def popen(self, index: int, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside namespace ``index``, in its own session so close() can kill its children too."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.exec_argv(index, argv), **kw)
        self._processes.append((proc, bool(kw["start_new_session"])))
        return proc

    def run(self, index: int, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside namespace ``index`` to completion (``subprocess.run`` keywords apply)."""
        kw.setdefault("timeout", 60)
        return subprocess.run(self.exec_argv(index, argv), **kw)

    def set_link(self, index: int, up: bool) -> None:
        """Cut (``up=False``) or restore namespace ``index``'s link to the bridge."""
        self._check_open()
        if not 0 <= index < self.count:
            raise IndexError(f"namespace index {index} out of range 0..{self.count - 1}")
        _ip("link", "set", "dev", f"p{index}", "up" if up else "down", namespace=self.switch)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for proc, own_group in self._processes:
            _stop_process(proc, own_group)
        for name in self.names:
            _kill_namespace_processes(name)
        _ip("link", "del", "dev", self.host_veth, check=False)
        for name in [*self.names, self.switch]:
            _ip("netns", "del", name, check=False)
        with _registry_lock:
            _live_labs.pop(self.lab_number, None)
        atexit.unregister(self.close)

    def _check_open(self) -> None:
        if self._closed:
            raise NetnsError(f"{self!r} is closed")


def _stop_process(proc: subprocess.Popen[Any], own_group: bool) -> None:
    """SIGTERM, then SIGKILL; the whole group when the process leads one (its helpers too)."""
    if proc.poll() is None:
        for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if own_group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
