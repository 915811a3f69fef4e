"""Peer request signing: the verifier, the aiohttp middleware on loopback, and real requests
from another address (a network namespace)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from peer.cluster.auth import (
    HEADER_FARM, HEADER_NONCE, HEADER_PEER, HEADER_SIGNATURE, HEADER_TIME, PEER_AUTH, SESSION_COOKIE, AuthError,
    PeerAuth, Verifier, auth_middleware, is_loopback, issue_session_cookie, peer_auth, session_cookie_valid,
    sign_headers, signing_session,
)
from peer.cluster.identity import FarmIdentity
from tests.netns import NetnsLab, requires_netns

REPO = Path(__file__).resolve().parents[2]
FARM = FarmIdentity(name="studio", secret=bytes(range(16)))
OTHER_FARM = FarmIdentity(name="studio", secret=bytes(16))  # same name, different secret
PEER = "peer-1234"
NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _error_fields(body: Any) -> str:
    """The message of a Flamenco error body that carries nothing else."""
    assert isinstance(body, dict) and set(body) == {"code", "message"}, body
    assert body["code"] == 401
    return body["message"]


# --- the verifier alone -----------------------------------------------------------


def _signed(path: str = "/peer/v1/task", body: bytes = b"{}", *, method: str = "POST", identity: FarmIdentity = FARM,
            peer: str = PEER, now: float = NOW, nonce: str | None = None) -> dict[str, str]:
    return sign_headers(identity, peer, method, path, body, now=now, nonce=nonce)


def test_a_good_signature_names_the_peer_and_a_replay_is_refused() -> None:
    verifier = Verifier(FARM, clock=Clock())
    headers = _signed()
    auth = verifier.verify("POST", "/peer/v1/task", headers, b"{}", remote="10.0.0.2")
    assert auth == PeerAuth(kind="peer", remote="10.0.0.2", peer_id=PEER)
    with pytest.raises(AuthError, match="repeats a nonce .* replayed request is refused"):
        verifier.verify("POST", "/peer/v1/task", headers, b"{}", remote="10.0.0.2")


@pytest.mark.parametrize("change", ["method", "path", "query", "body", "peer", "time", "nonce"])
def test_any_change_to_a_signed_request_breaks_the_signature(change: str) -> None:
    verifier = Verifier(FARM, clock=Clock())
    headers = _signed("/peer/v1/task?wait=5")
    method, path, body = "POST", "/peer/v1/task?wait=5", b"{}"
    if change == "method":
        method = "PUT"
    elif change == "path":
        path = "/peer/v1/other?wait=5"
    elif change == "query":
        path = "/peer/v1/task?wait=6"
    elif change == "body":
        body = b'{"x": 1}'
    elif change == "peer":
        headers[HEADER_PEER] = "peer-9999"
    elif change == "time":
        headers[HEADER_TIME] = str(int(headers[HEADER_TIME]) + 1)
    elif change == "nonce":
        headers[HEADER_NONCE] = "A" * 22
    with pytest.raises(AuthError, match="signature of this request from 10.0.0.2 does not match"):
        verifier.verify(method, path, headers, body, remote="10.0.0.2")
    assert len(verifier) == 0  # a refused request burns no nonce


def test_other_farm_and_wrong_secret_are_told_apart() -> None:
    verifier = Verifier(FARM, clock=Clock())
    with pytest.raises(AuthError) as info:
        verifier.verify("POST", "/peer/v1/task", _signed(identity=OTHER_FARM), b"{}", remote="10.0.0.2")
    assert "signed for another farm" in info.value.message and OTHER_FARM.farm_id in info.value.message
    assert "--join-code" in info.value.message
    forged = _signed(identity=OTHER_FARM)
    forged[HEADER_FARM] = FARM.farm_id  # claims this farm, but holds the wrong secret
    with pytest.raises(AuthError, match="different secret for farm"):
        verifier.verify("POST", "/peer/v1/task", forged, b"{}", remote="10.0.0.2")


@pytest.mark.parametrize("offset_s, fragment", [
    (-61, "61 s ago"), (-3600, "3600 s ago"), (61, "61 s in the future"),
])
def test_timestamps_outside_the_window_are_refused(offset_s: float, fragment: str) -> None:
    verifier = Verifier(FARM, clock=Clock())
    with pytest.raises(AuthError) as info:
        verifier.verify("POST", "/p", _signed("/p", now=NOW + offset_s), b"{}", remote="10.0.0.2")
    assert fragment in info.value.message and "±60 s" in info.value.message and "clock" in info.value.message


@pytest.mark.parametrize("offset_s", [-59.9, 0, 59.9])
def test_timestamps_inside_the_window_are_accepted(offset_s: float) -> None:
    verifier = Verifier(FARM, clock=Clock())
    verifier.verify("POST", "/p", _signed("/p", now=NOW + offset_s), b"{}", remote="10.0.0.2")


def test_custom_window() -> None:
    verifier = Verifier(FARM, max_skew_s=5, clock=Clock())
    with pytest.raises(AuthError, match="±5 s"):
        verifier.verify("POST", "/p", _signed("/p", now=NOW - 6), b"{}", remote="10.0.0.2")


@pytest.mark.parametrize("header, value, fragment", [
    (HEADER_TIME, "yesterday", "Unix time in milliseconds"),
    (HEADER_TIME, "-5", "Unix time in milliseconds"),
    (HEADER_NONCE, "short", "16-64 of"),
    (HEADER_NONCE, "x" * 65, "16-64 of"),
    (HEADER_NONCE, "has spaces in it!!", "16-64 of"),
    (HEADER_PEER, "peer with spaces", "is not a peer id"),
    (HEADER_SIGNATURE, "ABC", "64 lowercase hex digits"),
])
def test_malformed_headers_are_named(header: str, value: str, fragment: str) -> None:
    headers = _signed()
    headers[header] = value
    with pytest.raises(AuthError) as info:
        Verifier(FARM, clock=Clock()).verify("POST", "/peer/v1/task", headers, b"{}", remote="10.0.0.2")
    assert fragment in info.value.message and header in info.value.message


def test_missing_headers_are_named() -> None:
    headers = _signed()
    del headers[HEADER_NONCE], headers[HEADER_SIGNATURE]
    with pytest.raises(AuthError, match=f"incomplete farm signature \\(missing {HEADER_NONCE}, {HEADER_SIGNATURE}\\)"):
        Verifier(FARM, clock=Clock()).verify("POST", "/peer/v1/task", headers, b"{}", remote="10.0.0.2")
    with pytest.raises(AuthError, match="comes from 10.0.0.2 and carries no farm signature"):
        Verifier(FARM, clock=Clock()).verify("POST", "/peer/v1/task", {}, b"{}", remote="10.0.0.2")


def test_sign_headers_refuses_a_peer_id_that_cannot_travel_in_a_header() -> None:
    with pytest.raises(ValueError, match="peer id"):
        sign_headers(FARM, "peer\nwith newline", "GET", "/", b"")


def test_nonces_are_forgotten_once_their_time_has_left_the_window() -> None:
    clock = Clock()
    verifier = Verifier(FARM, clock=clock)
    for _ in range(5):
        verifier.verify("GET", "/", _signed("/", b"", method="GET", now=clock.now), b"", remote="r")
    assert len(verifier) == 5
    clock.now += 61
    verifier.verify("GET", "/", _signed("/", b"", method="GET", now=clock.now), b"", remote="r")
    assert len(verifier) == 1


def test_a_full_nonce_cache_refuses_old_requests_instead_of_forgetting_replays() -> None:
    clock = Clock()
    verifier = Verifier(FARM, nonce_capacity=3, clock=clock)
    sent = []
    for i in range(4):
        headers = _signed("/", b"", method="GET", now=NOW + i)
        verifier.verify("GET", "/", headers, b"", remote="r")
        sent.append(headers)
    assert len(verifier) == 3
    # The first nonce was dropped to make room; replaying it is still refused.
    with pytest.raises(AuthError, match="replay cache is full"):
        verifier.verify("GET", "/", sent[0], b"", remote="r")
    with pytest.raises(AuthError, match="replay cache is full"):
        verifier.verify("GET", "/", _signed("/", b"", method="GET", now=NOW), b"", remote="r")
    with pytest.raises(AuthError, match="repeats a nonce"):
        verifier.verify("GET", "/", sent[3], b"", remote="r")
    verifier.verify("GET", "/", _signed("/", b"", method="GET", now=NOW + 1.5), b"", remote="r")
    assert len(verifier) == 3


# --- helpers for the dashboard's login (used later) --------------------------------------


def test_session_cookies() -> None:
    cookie = issue_session_cookie(FARM, max_age_s=3600, now=NOW)
    assert session_cookie_valid(FARM, cookie, now=NOW + 3599)
    assert not session_cookie_valid(FARM, cookie, now=NOW + 3601)
    assert not session_cookie_valid(OTHER_FARM, cookie, now=NOW)
    version, expires, rand, mac = cookie.split(".")
    assert not session_cookie_valid(FARM, f"{version}.{int(expires) + 10**6}.{rand}.{mac}", now=NOW)
    assert not session_cookie_valid(FARM, f"{version}.{expires}.{rand}x.{mac}", now=NOW)
    for garbage in ["", "v1", "v1.a.b.c", "v2.1.2.3", cookie + ".x", FARM.secret.hex()]:
        assert not session_cookie_valid(FARM, garbage, now=NOW)
    assert issue_session_cookie(FARM, now=NOW) != issue_session_cookie(FARM, now=NOW)


@pytest.mark.parametrize("remote, expected", [
    ("127.0.0.1", True), ("127.255.3.4", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("192.168.1.5", False), ("::ffff:10.0.0.1", False), ("fe80::1%eth0", False),
    ("0.0.0.0", False), ("::", False), ("", False), (None, False), ("localhost", False), ("not an ip", False),
])
def test_is_loopback(remote: str | None, expected: bool) -> None:
    assert is_loopback(remote) is expected


# --- the middleware over real HTTP ---------------------------------------------------------


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.calls: list[tuple[str, PeerAuth]] = []


def _auth_json(auth: PeerAuth) -> dict[str, Any]:
    return {"kind": auth.kind, "peer_id": auth.peer_id, "remote": auth.remote}


@contextlib.asynccontextmanager
async def serve(verifier: Verifier, host: str = "127.0.0.1", **options: Any) -> AsyncIterator[Server]:
    server: Server

    async def submit(request: web.Request) -> web.Response:
        raw = await request.read()
        parsed = await request.json()  # the body is still readable after the middleware read it
        server.calls.append(("submit", request[PEER_AUTH]))
        return web.json_response({"auth": _auth_json(request[PEER_AUTH]), "json": parsed, "size": len(raw)})

    async def fetch(request: web.Request) -> web.Response:
        server.calls.append(("fetch", peer_auth(request)))
        return web.json_response({"auth": _auth_json(peer_auth(request)), "name": request.match_info["name"],
                                  "query": dict(request.query)})

    app = web.Application(middlewares=[auth_middleware(verifier, **options)], client_max_size=8 * 1024 * 1024)
    app.router.add_post("/api/v3/jobs", submit)
    app.router.add_get("/peer/v1/files/{name}", fetch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    server = Server(f"http://{host}:{runner.addresses[0][1]}")
    try:
        yield server
    finally:
        await runner.cleanup()


async def _call(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.request(method, url, **kw) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body


async def test_loopback_clients_need_no_credentials() -> None:
    async with serve(Verifier(FARM)) as server, aiohttp.ClientSession() as session:
        status, body = await _call(session, "POST", server.url + "/api/v3/jobs", json={"name": "job"})
        assert status == 200 and body["json"] == {"name": "job"}
        assert body["auth"] == {"kind": "local", "peer_id": None, "remote": "127.0.0.1"}
        status, body = await _call(session, "GET", server.url + "/peer/v1/files/frame.png")
        assert status == 200 and body["auth"]["kind"] == "local"
        # An unknown route is the application's business once the caller is trusted.
        async with session.get(server.url + "/no/such/route") as resp:
            assert resp.status == 404


async def test_ipv6_loopback_is_trusted_too() -> None:
    try:
        ctx = serve(Verifier(FARM), host="::1")
        server = await ctx.__aenter__()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        async with aiohttp.ClientSession() as session:
            status, body = await _call(session, "GET", f"http://[::1]:{server.url.rsplit(':', 1)[1]}/peer/v1/files/a")
            assert status == 200 and body["auth"] == {"kind": "local", "peer_id": None, "remote": "::1"}
    finally:
        await ctx.__aexit__(None, None, None)


async def test_signed_requests_from_loopback_name_the_peer_and_keep_the_body() -> None:
    big = {"blob": "x" * (2 * 1024 * 1024)}
    async with serve(Verifier(FARM), trust_loopback=False) as server, signing_session(FARM, PEER) as session:
        status, body = await _call(session, "POST", server.url + "/api/v3/jobs", json=big)
        assert status == 200 and body["json"] == big and body["size"] > 2 * 1024 * 1024
        assert body["auth"] == {"kind": "peer", "peer_id": PEER, "remote": "127.0.0.1"}
        # The signature covers the query exactly as it travels (quoted characters included).
        status, body = await _call(session, "GET", server.url + "/peer/v1/files/a b.png",
                                   params={"dir": "renders/shot 1", "x": "ä&="})
        assert status == 200 and body["name"] == "a b.png"
        assert body["query"] == {"dir": "renders/shot 1", "x": "ä&="}
        assert [c[1].peer_id for c in server.calls] == [PEER, PEER]


async def test_a_bad_signature_from_loopback_is_refused_even_when_loopback_is_trusted() -> None:
    async with serve(Verifier(FARM)) as server, signing_session(OTHER_FARM, PEER) as session:
        status, body = await _call(session, "GET", server.url + "/peer/v1/files/a")
        assert status == 401 and "another farm" in _error_fields(body)
        assert server.calls == []


async def test_without_loopback_trust_every_refusal_is_a_bare_401() -> None:
    clock = Clock(time.time())
    async with serve(Verifier(FARM, clock=clock), trust_loopback=False) as server, \
            aiohttp.ClientSession() as session:
        jobs = server.url + "/api/v3/jobs"
        body_bytes = b'{"name": "job"}'

        def signed(body: bytes = body_bytes, **kw: Any) -> dict[str, str]:
            return {"Content-Type": "application/json",
                    **sign_headers(kw.pop("identity", FARM), PEER, "POST", "/api/v3/jobs", body, **kw)}

        replayed = signed()
        assert (await _call(session, "POST", jobs, data=body_bytes, headers=replayed))[0] == 200
        forged = signed(identity=OTHER_FARM)
        forged[HEADER_FARM] = FARM.farm_id
        cases: dict[str, tuple[str, str, dict[str, Any]]] = {
            "unsigned": ("POST", jobs, {"json": {"name": "job"}}),
            "unsigned unknown route": ("GET", server.url + "/no/such/route", {}),
            "unsigned file fetch": ("GET", server.url + "/peer/v1/files/frame.png", {}),
            "replayed": ("POST", jobs, {"data": body_bytes, "headers": replayed}),
            "tampered body": ("POST", jobs, {"data": b'{"name": "evil"}', "headers": signed()}),
            "tampered path": ("POST", jobs + "?priority=100", {"data": body_bytes, "headers": signed()}),
            "expired": ("POST", jobs, {"data": body_bytes, "headers": signed(now=clock.now - 120)}),
            "from the future": ("POST", jobs, {"data": body_bytes, "headers": signed(now=clock.now + 120)}),
            "wrong secret": ("POST", jobs, {"data": body_bytes, "headers": forged}),
            "other farm": ("POST", jobs, {"data": body_bytes, "headers": signed(identity=OTHER_FARM)}),
        }
        expected = {
            "unsigned": "comes from 127.0.0.1 and carries no farm signature",
            "unsigned unknown route": "carries no farm signature",
            "unsigned file fetch": "carries no farm signature",
            "replayed": "replayed request is refused",
            "tampered body": "does not match",
            "tampered path": "does not match",
            "expired": "120 s ago",
            "from the future": "120 s in the future",
            "wrong secret": "different secret",
            "other farm": "signed for another farm",
        }
        for name, (method, url, kw) in cases.items():
            async with session.request(method, url, **kw) as resp:
                assert resp.status == 401, name
                assert resp.content_type == "application/json", name
                assert resp.headers["WWW-Authenticate"] == "FP1-HMAC-SHA256"
                message = _error_fields(await resp.json())
            assert expected[name] in message, (name, message)
        assert len(server.calls) == 1  # only the first, genuine submission reached a handler


async def test_unsigned_message_says_how_to_join() -> None:
    async with serve(Verifier(FARM), trust_loopback=False) as server, aiohttp.ClientSession() as session:
        status, body = await _call(session, "GET", server.url + "/peer/v1/files/a")
    assert status == 401
    assert _error_fields(body) == (
        "this request comes from 127.0.0.1 and carries no farm signature; peers of this farm sign their requests "
        "— join the farm with `flamenco-peer run --join-code CODE` (get CODE from `flamenco-peer farm join-code` "
        "on a farm peer)"
    )


@pytest.mark.parametrize("headers, allowed", [
    ({}, True),
    ({"Origin": "http://127.0.0.1:{port}"}, True),
    ({"Origin": "http://localhost:{port}"}, True),
    ({"Host": "localhost:{port}"}, True),
    ({"Origin": "https://evil.example"}, False),
    ({"Origin": "null"}, False),
    ({"Origin": "http://127.0.0.1.evil.example"}, False),
    ({"Host": "evil.example:{port}"}, False),  # DNS rebinding: a foreign name that resolves to 127.0.0.1
])
async def test_web_pages_of_other_sites_cannot_use_loopback_trust(headers: dict[str, str], allowed: bool) -> None:
    async with serve(Verifier(FARM)) as server, aiohttp.ClientSession() as session:
        port = server.url.rsplit(":", 1)[1]
        sent = {k: v.format(port=port) for k, v in headers.items()}
        status, body = await _call(session, "POST", server.url + "/api/v3/jobs", json={"a": 1}, headers=sent)
    if allowed:
        assert status == 200 and body["auth"]["kind"] == "local"
    else:
        assert status == 401 and "this computer" in _error_fields(body)
        assert server.calls == []


async def test_a_browser_session_cookie_is_accepted_when_enabled() -> None:
    cookie = issue_session_cookie(FARM)
    async with serve(Verifier(FARM), trust_loopback=False, accept_session_cookie=True) as server, \
            aiohttp.ClientSession() as session:
        url = server.url + "/peer/v1/files/a"
        status, body = await _call(session, "GET", url, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
        assert status == 200 and body["auth"]["kind"] == "browser"
        same_site = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": server.url}
        assert (await _call(session, "GET", url, headers=same_site))[0] == 200
        cross_site = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": "https://evil.example"}
        status, body = await _call(session, "GET", url, headers=cross_site)
        assert status == 401 and "another site" in _error_fields(body)
        other = issue_session_cookie(OTHER_FARM)
        status, body = await _call(session, "GET", url, headers={"Cookie": f"{SESSION_COOKIE}={other}"})
        assert status == 401 and "no farm signature" in _error_fields(body)
    async with serve(Verifier(FARM), trust_loopback=False) as server, aiohttp.ClientSession() as session:
        status, _ = await _call(session, "GET", server.url + "/peer/v1/files/a",
                                headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
        assert status == 401  # cookies count only where the dashboard enables them


# --- from another address (network namespace) ----------------------------------------------

REMOTE_CLIENT = r"""
import asyncio, json, sys, time
import aiohttp
from peer.cluster.auth import HEADER_FARM, sign_headers, signing_session
from peer.cluster.identity import FarmIdentity

url, secret, other_secret, peer = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]), sys.argv[4]
farm, other = FarmIdentity("studio", secret), FarmIdentity("studio", other_secret)
JOB = b'{"name": "from another computer"}'
results = []

async def call(case, session, method, path, **kw):
    async with session.request(method, url + path, **kw) as resp:
        results.append({"case": case, "status": resp.status, "body": await resp.json(content_type=None)})

def signed(body=JOB, path="/api/v3/jobs", identity=farm, **kw):
    return {"Content-Type": "application/json", **sign_headers(identity, peer, "POST", path, body, **kw)}

async def main():
    async with aiohttp.ClientSession() as plain:
        await call("unsigned submit", plain, "POST", "/api/v3/jobs", data=JOB)
        await call("unsigned fetch", plain, "GET", "/peer/v1/files/frame.png")
        await call("unsigned unknown route", plain, "GET", "/no/such/route")
        await call("spoofed forwarding headers", plain, "GET", "/peer/v1/files/frame.png",
                   headers={"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Host": "127.0.0.1"})
        once = signed()
        await call("signed", plain, "POST", "/api/v3/jobs", data=JOB, headers=once)
        await call("replayed", plain, "POST", "/api/v3/jobs", data=JOB, headers=once)
        await call("tampered", plain, "POST", "/api/v3/jobs", data=b'{"name": "evil"}', headers=signed())
        await call("expired", plain, "POST", "/api/v3/jobs", data=JOB, headers=signed(now=time.time() - 120))
        forged = signed(identity=other)
        forged[HEADER_FARM] = farm.farm_id
        await call("wrong secret", plain, "POST", "/api/v3/jobs", data=JOB, headers=forged)
        await call("other farm", plain, "POST", "/api/v3/jobs", data=JOB, headers=signed(identity=other))
    async with signing_session(farm, peer) as session:
        await call("signing session submit", session, "POST", "/api/v3/jobs", json={"name": "via session"})
        await call("signing session fetch", session, "GET", "/peer/v1/files/frame 1.png", params={"q": "a b"})
    print(json.dumps(results))

asyncio.run(main())
"""


@requires_netns
@pytest.mark.timeout(60)
async def test_requests_from_another_address_need_the_farm_signature() -> None:
    lab = await asyncio.to_thread(NetnsLab, 1)
    try:
        async with serve(Verifier(FARM), host=lab.host_ip) as server:
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            proc = await asyncio.create_subprocess_exec(
                *lab.exec_argv(0, [sys.executable, "-c", REMOTE_CLIENT, server.url, FARM.secret.hex(),
                                   OTHER_FARM.secret.hex(), PEER]),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(REPO),
            )
            out, err = await asyncio.wait_for(proc.communicate(), 45)
            assert proc.returncode == 0, err.decode()
            results = {r["case"]: r for r in json.loads(out)}
    finally:
        await asyncio.to_thread(lab.close)

    remote = lab.ips[0]
    refused = {
        "unsigned submit": f"this request comes from {remote} and carries no farm signature",
        "unsigned fetch": f"this request comes from {remote} and carries no farm signature",
        "unsigned unknown route": "carries no farm signature",
        "spoofed forwarding headers": f"this request comes from {remote} and carries no farm signature",
        "replayed": "replayed request is refused",
        "tampered": "does not match",
        "expired": "120 s ago",
        "wrong secret": "different secret",
        "other farm": "signed for another farm",
    }
    for case, fragment in refused.items():
        assert results[case]["status"] == 401, results[case]
        message = _error_fields(results[case]["body"])
        assert fragment in message, (case, message)
        assert "--join-code" in message or "send" in message or "clock" in message
    assert results["signed"]["status"] == 200
    assert results["signed"]["body"]["json"] == {"name": "from another computer"}
    assert results["signing session submit"]["status"] == 200
    fetched = results["signing session fetch"]
    assert fetched["status"] == 200
    assert fetched["body"]["name"] == "frame 1.png" and fetched["body"]["query"] == {"q": "a b"}
    expected_auth = PeerAuth(kind="peer", remote=remote, peer_id=PEER)
    assert server.calls == [("submit", expected_auth), ("submit", expected_auth), ("fetch", expected_auth)]
