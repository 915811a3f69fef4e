"""Talking to a peer that is not there, or to something that is not a peer."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from .conftest import Cli, assert_clean_error

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens there

COMMANDS = [
    ["jobs"], ["jobs", "--json"], ["workers"], ["job-types", "--json"],
    ["tasks", "abcdef12"], ["log", "abcdef12", "--json"],
    ["cancel", "abcdef12"], ["pause", "abcdef12"], ["requeue", "abcdef12"], ["delete", "abcdef12"],
    ["priority", "abcdef12", "10"],
    ["submit", "echo-sleep-test", "--set", "message=hi"],
    ["submit", "echo-sleep-test", "--set", "message=hi", "--json", "--wait"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_no_peer_running(bare_cli: Cli, command: list[str]) -> None:
    r = bare_cli(*command, peer=NOWHERE, timeout=20)
    assert_clean_error(r)
    assert r.stdout == "", r.explain()
    assert NOWHERE in r.stderr, r.explain()
    assert "flamenco-peer run" in r.stderr, r.explain()  # how to start one
    assert "--peer" in r.stderr, r.explain()             # or how to point elsewhere


def test_no_peer_running_default_url(bare_cli: Cli) -> None:
    # No --peer, no FLAMENCO_PEER_URL, no peer.json in the (empty) default data dir:
    # the CLI tries the default URL and says how to start a peer.
    r = bare_cli("jobs", use_peer=False, timeout=20)
    if r.returncode == 0:
        pytest.skip("a peer is listening on the default port 8780 on this machine")
    assert_clean_error(r)
    assert "http://127.0.0.1:8780" in r.stderr and "flamenco-peer run" in r.stderr, r.explain()


# --- not a peer at all ----------------------------------------------------------


@pytest.fixture
def banner_server() -> Iterator[str]:
    """A TCP service that is not HTTP (like an SSH server someone typed the port of)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
                try:
                    conn.recv(4096)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join(5)
    srv.close()


@pytest.fixture
def html_server() -> Iterator[str]:
    """Some other web server that answers 200 text/html to everything."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>Welcome to nginx!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("command", [["jobs"], ["submit", "echo-sleep-test", "--set", "message=hi"]],
                         ids=lambda c: c[0])
def test_a_service_that_is_not_http(bare_cli: Cli, banner_server: str, command: list[str]) -> None:
    # At 545a226 this was a traceback: clientlib.request did not catch http.client.BadStatusLine.
    r = bare_cli(*command, peer=banner_server, timeout=20)
    assert_clean_error(r)
    assert banner_server in r.stderr, r.explain()


@pytest.mark.parametrize("command", [["jobs"], ["submit", "echo-sleep-test", "--set", "message=hi"]],
                         ids=lambda c: c[0])
def test_a_web_server_that_is_not_a_peer(bare_cli: Cli, html_server: str, command: list[str]) -> None:
    # At 545a226 this was a traceback: the HTML page reached cli code as a str.
    r = bare_cli(*command, peer=html_server, timeout=20)
    assert_clean_error(r)
    assert html_server in r.stderr, r.explain()
