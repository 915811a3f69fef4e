"""The network namespace lab itself: addressing, reachability, multicast, partitions, cleanup."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from tests.netns import NetnsLab, requires_netns

pytestmark = [pytest.mark.timeout(30), requires_netns]

ECHO_SERVER = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(b"echo:" + conn.recv(100))
"""

ECHO_CLIENT = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as conn:
        conn.sendall(b"hello")
        print(conn.recv(100).decode())
except OSError as exc:
    print(f"failed: {exc!r}")
    sys.exit(1)
"""

# Receives one datagram on a multicast group joined on the namespace's eth0 address.
MCAST_RECEIVER = r"""
import socket, struct, sys
group, port, local_ip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("", port))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(local_ip)))
print("ready", flush=True)
sock.settimeout(10)
data, sender = sock.recvfrom(100)
print(f"{data.decode()} from {sender[0]}", flush=True)
"""

MCAST_SENDER = r"""
import socket, sys, time
group, port, local_ip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local_ip))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for _ in range(50):
    sock.sendto(b"ping", (group, port))
    time.sleep(0.1)
"""


def _start_echo_server(lab: NetnsLab, index: int) -> int:
    server = lab.popen(index, [sys.executable, "-c", ECHO_SERVER, lab.ips[index]],
                       stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return int(server.stdout.readline())


def _echo_from(lab: NetnsLab, index: int, host: str, port: int, timeout: float = 3.0) -> str:
    result = lab.run(index, [sys.executable, "-c", ECHO_CLIENT, host, str(port), str(timeout)],
                     capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


def _namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split(" ", 1)[0] for line in listing.splitlines()}


def _host_links() -> set[str]:
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    return {link["ifname"] for link in links}


def test_layout_addresses_and_loopback() -> None:
    with NetnsLab(3) as lab:
        assert len(lab.names) == len(set(lab.names)) == 3
        assert set(lab.names) <= _namespaces()
        subnet = ipaddress.IPv4Network(f"{lab.host_ip}/24", strict=False)
        assert all(ipaddress.IPv4Address(ip) in subnet for ip in lab.ips)
        assert len({*lab.ips, lab.host_ip}) == 4
        for index, ip in enumerate(lab.ips):
            links = json.loads(lab.run(index, ["ip", "-j", "-4", "addr", "show"], capture_output=True,
                                       text=True, check=True).stdout)
            by_name = {link["ifname"]: link for link in links}
            assert "UP" in by_name["lo"]["flags"], f"loopback is down in {lab.names[index]}"
            assert [a["local"] for a in by_name["eth0"]["addr_info"]] == [ip]
        # Loopback really works inside a namespace (peers bind 127.0.0.1 there too).
        port = _start_echo_on_loopback(lab, 0)
        assert _echo_from(lab, 0, "127.0.0.1", port) == "echo:hello"


def _start_echo_on_loopback(lab: NetnsLab, index: int) -> int:
    server = lab.popen(index, [sys.executable, "-c", ECHO_SERVER, "127.0.0.1"],
                       stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return int(server.stdout.readline())


def test_tcp_between_namespaces_and_with_the_host() -> None:
    with NetnsLab(3) as lab:
        port = _start_echo_server(lab, 0)
        assert _echo_from(lab, 1, lab.ips[0], port) == "echo:hello"
        # host -> namespace
        with socket.create_connection((lab.ips[0], port), timeout=3) as conn:
            conn.sendall(b"host")
            assert conn.recv(100) == b"echo:host"
        # namespace -> host_ip
        with socket.create_server((lab.host_ip, 0)) as host_server:
            host_port = host_server.getsockname()[1]

            def serve_one() -> None:
                conn, _ = host_server.accept()
                with conn:
                    conn.sendall(b"host-echo:" + conn.recv(100))

            thread = threading.Thread(target=serve_one, daemon=True)
            thread.start()
            assert _echo_from(lab, 2, lab.host_ip, host_port) == "host-echo:hello"
            thread.join(timeout=5)


def test_multicast_crosses_the_bridge() -> None:
    group, port = "239.255.77.77", 45678
    with NetnsLab(3) as lab:
        receivers = [lab.popen(i, [sys.executable, "-c", MCAST_RECEIVER, group, str(port), lab.ips[i]],
                               stdout=subprocess.PIPE, text=True) for i in (1, 2)]
        for receiver in receivers:
            assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        lab.popen(0, [sys.executable, "-c", MCAST_SENDER, group, str(port), lab.ips[0]])
        for receiver in receivers:
            out, _ = receiver.communicate(timeout=15)
            assert out.strip() == f"ping from {lab.ips[0]}", out


def test_set_link_cuts_and_restores_one_namespace() -> None:
    with NetnsLab(2) as lab:
        port = _start_echo_server(lab, 0)
        assert _echo_from(lab, 1, lab.ips[0], port) == "echo:hello"
        lab.set_link(0, False)
        cut = _echo_from(lab, 1, lab.ips[0], port, timeout=0.5)
        assert cut.startswith("failed:"), cut
        with pytest.raises(OSError):
            socket.create_connection((lab.ips[0], port), timeout=0.5)
        lab.set_link(0, True)
        assert _echo_from(lab, 1, lab.ips[0], port) == "echo:hello"


def test_close_kills_processes_and_leaves_nothing_behind() -> None:
    lab = NetnsLab(2)
    other = NetnsLab(1)  # a second lab at the same time must not clash
    try:
        assert not set(lab.names) & set(other.names)
        assert lab.host_veth != other.host_veth
        assert ipaddress.IPv4Network(f"{lab.host_ip}/24", strict=False) != \
            ipaddress.IPv4Network(f"{other.host_ip}/24", strict=False)
        sleeper = lab.popen(1, ["sleep", "60"])
        # Started without popen: close() must find it inside the namespace anyway.
        stray = subprocess.Popen(lab.exec_argv(0, ["sleep", "60"]))
        lab.close()
        assert sleeper.poll() is not None
        assert stray.wait(timeout=5) != 0
        assert not {*lab.names, lab.switch} & _namespaces()
        assert lab.host_veth not in _host_links()
        lab.close()  # idempotent
        assert set(other.names) <= _namespaces()  # the other lab is untouched
    finally:
        lab.close()
        other.close()
    assert not set(other.names) & _namespaces()


def test_leftovers_of_a_dead_process_are_swept() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"fplab-{dead.pid}-0-0"
    if dead.pid == os.getpid() or stale in _namespaces():
        pytest.skip("pid reuse made the stale name ambiguous")
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with NetnsLab(1):
            assert stale not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
