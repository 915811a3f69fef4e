"""Who may talk to a peer: loopback clients freely, other computers only with the farm's signature.

Peers sign every request with a key derived from the farm secret (HMAC-SHA256).
A request from another address without a valid signature gets 401 with a
Flamenco error body that says what to do, and nothing else: it cannot submit,
claim a task, fetch a file or even learn which endpoints exist.

Signed requests carry five headers::

    X-Flamenco-Farm       the farm id (tells "another farm" apart from "bad signature")
    X-Flamenco-Peer       the sender's peer id
    X-Flamenco-Time       Unix time in milliseconds when the request was signed
    X-Flamenco-Nonce      16 to 64 characters of [A-Za-z0-9_-], new for every request
    X-Flamenco-Signature  lowercase hex HMAC-SHA256 of the canonical text below

The canonical text is these lines joined by "\\n" (no trailing newline)::

    FP1-HMAC-SHA256
    <farm id>
    <peer id>
    <METHOD>
    <path and query exactly as on the wire, e.g. /peer/v1/task?x=%20>
    <time>
    <nonce>
    <lowercase hex sha256 of the body bytes>

keyed with ``identity.derive_key("request signing")``. A receiver accepts a
time within ``max_skew_s`` (60 s) of its own clock and each nonce once.

A request from loopback (127.0.0.0/8, ::1, ::ffff:127.x) needs no signature:
that is the add-on, the CLI and the local dashboard. Such a request is still
refused when a web browser sent it on behalf of another site (an ``Origin``
header that is not this computer) or under a foreign host name (DNS
rebinding), because "loopback" would otherwise include every web page the
user visits. A loopback request that does carry a signature must carry a
valid one.

Handlers learn who called from ``request[PEER_AUTH]`` (a ``PeerAuth``).
The middleware reads the body to check it; handlers read it again with
``request.read()``, ``request.text()``, ``request.json()`` or ``request.post()``
(aiohttp keeps it), not from ``request.content``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import heapq
import ipaddress
import re
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal, Mapping

import aiohttp
from aiohttp import web
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType
from aiohttp.payload import Payload
from yarl import URL

from .identity import FarmIdentity

SCHEME = "FP1-HMAC-SHA256"
HEADER_FARM = "X-Flamenco-Farm"
HEADER_PEER = "X-Flamenco-Peer"
HEADER_TIME = "X-Flamenco-Time"
HEADER_NONCE = "X-Flamenco-Nonce"
HEADER_SIGNATURE = "X-Flamenco-Signature"
SIGNATURE_HEADERS = (HEADER_FARM, HEADER_PEER, HEADER_TIME, HEADER_NONCE, HEADER_SIGNATURE)

SESSION_COOKIE = "flamenco_peer_session"
DEFAULT_MAX_SKEW_S = 60.0
DEFAULT_NONCE_CAPACITY = 100_000
DEFAULT_SESSION_AGE_S = 30 * 24 * 3600

_PEER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_JOIN_HINT = (
    "join the farm with `flamenco-peer run --join-code CODE` "
    "(get CODE from `flamenco-peer farm join-code` on a farm peer)"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AuthError(Exception):
    """A request this peer refuses; ``message`` tells the caller what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class PeerAuth:
    """Who made a request: a client on this computer, a farm peer, or a logged-in browser."""

    kind: Literal["local", "peer", "browser"]
    remote: str
    peer_id: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    @property
    def is_peer(self) -> bool:
        return self.kind == "peer"


# Handlers read ``request[PEER_AUTH]`` (or ``peer_auth(request)``) to learn who called.
PEER_AUTH = web.RequestKey("peer_auth", PeerAuth)


def peer_auth(request: web.Request) -> PeerAuth:
    """Who made ``request``; every request that reached a handler behind ``auth_middleware`` has one."""
    return request[PEER_AUTH]


# --- signing ---------------------------------------------------------------------


def _canonical(farm_id: str, peer_id: str, method: str, path_qs: str, time_ms: int, nonce: str, body: bytes) -> bytes:
    return "\n".join([
        SCHEME, farm_id, peer_id, method.upper(), path_qs, str(time_ms), nonce, hashlib.sha256(body).hexdigest(),
    ]).encode("utf-8")


def _signature(key: bytes, canonical: bytes) -> str:
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def sign_headers(
    identity: FarmIdentity, peer_id: str, method: str, path_qs: str, body: bytes = b"", *,
    now: float | None = None, nonce: str | None = None,
) -> dict[str, str]:
    """Headers that make a request acceptable to the farm's peers.

    ``path_qs`` is the request target as sent on the wire (``URL.raw_path_qs``).
    ``now`` and ``nonce`` exist for tests; leave them out.
    """
    return _sign_headers(
        identity.farm_id, _signing_key(identity), peer_id, method, path_qs, body, now=now, nonce=nonce,
    )


def _signing_key(identity: FarmIdentity) -> bytes:
    return identity.derive_key("request signing")


def _sign_headers(
    farm_id: str, key: bytes, peer_id: str, method: str, path_qs: str, body: bytes, *,
    now: float | None = None, nonce: str | None = None,
) -> dict[str, str]:
    if not _PEER_ID.match(peer_id):
        raise ValueError(f"peer id {peer_id!r} cannot be used in a signature: 1-128 of [A-Za-z0-9._:-]")
    time_ms = int((time.time() if now is None else now) * 1000)
    nonce = new_nonce() if nonce is None else nonce
    canonical = _canonical(farm_id, peer_id, method, path_qs, time_ms, nonce, body)
    return {
        HEADER_FARM: farm_id,
        HEADER_PEER: peer_id,
        HEADER_TIME: str(time_ms),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: _signature(key, canonical),
    }


def signing_middleware(identity: FarmIdentity, peer_id: str) -> ClientMiddlewareType:
    """An aiohttp client middleware that signs every request of a session.

    Use ``aiohttp.ClientSession(middlewares=(signing_middleware(identity, peer_id),))``
    or ``signing_session``. Bodies must be bytes, text, JSON or form data (they
    are hashed before sending); stream large files as several signed requests.
    """
    farm_id, key = identity.farm_id, _signing_key(identity)  # derived once, not per request

    async def sign(request: aiohttp.ClientRequest, handler: ClientHandlerType) -> aiohttp.ClientResponse:
        body = request.body
        data = await body.as_bytes() if isinstance(body, Payload) else bytes(body)
        request.headers.update(_sign_headers(farm_id, key, peer_id, request.method, request.url.raw_path_qs, data))
        return await handler(request)

    return sign


def signing_session(identity: FarmIdentity, peer_id: str, **kwargs: object) -> aiohttp.ClientSession:
    """A ``ClientSession`` whose requests other peers of the farm accept."""
    middlewares = (signing_middleware(identity, peer_id),)
    return aiohttp.ClientSession(middlewares=middlewares, **kwargs)  # type: ignore[arg-type]


# --- verifying -------------------------------------------------------------------


@dataclass(frozen=True)
class SignedHeaders:
    """Signature headers that passed every check that does not need the body."""

    remote: str
    peer_id: str
    time_ms: int
    nonce: str
    signature: str


def _unsigned_message(remote: str) -> str:
    return (
        f"this request comes from {remote} and carries no farm signature; "
        f"peers of this farm sign their requests — {_JOIN_HINT}"
    )


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


class Verifier:
    """Checks peer signatures for one farm and remembers nonces to refuse replays.

    Nonces are kept until their time leaves the window, and at most
    ``nonce_capacity`` of them. When the cache is full the oldest is dropped
    and requests signed at or before its time are refused from then on, so a
    full cache never lets a replay through.
    """

    def __init__(
        self, identity: FarmIdentity, *, max_skew_s: float = DEFAULT_MAX_SKEW_S,
        nonce_capacity: int = DEFAULT_NONCE_CAPACITY, clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.max_skew_ms = int(max_skew_s * 1000)
        self.nonce_capacity = max(1, nonce_capacity)
        self.clock = clock
        self._key = _signing_key(identity)
        self._seen: dict[str, int] = {}
        self._by_time: list[tuple[int, str]] = []
        self._floor_ms = -1  # requests signed at or before this time are refused (evicted nonces)

    def __len__(self) -> int:
        return len(self._seen)

    def _forget_expired(self, now_ms: int) -> None:
        limit = now_ms - self.max_skew_ms
        while self._by_time and self._by_time[0][0] < limit:
            _, nonce = heapq.heappop(self._by_time)
            del self._seen[nonce]

    def check_headers(self, headers: Mapping[str, str], remote: str) -> SignedHeaders:
        """Everything that can be checked before reading the body; raises ``AuthError``."""
        values = {name: headers.get(name) for name in SIGNATURE_HEADERS}
        missing = [name for name, value in values.items() if not value]
        if len(missing) == len(SIGNATURE_HEADERS):
            raise AuthError(_unsigned_message(remote))
        if missing:
            raise AuthError(
                f"this request from {remote} carries an incomplete farm signature (missing {', '.join(missing)}); "
                "sign with peer.cluster.auth.sign_headers, which sets every X-Flamenco-* header"
            )
        farm, peer_id, time_text, nonce, signature = (str(values[name]) for name in SIGNATURE_HEADERS)
        if not hmac.compare_digest(farm.encode(), self.identity.farm_id.encode()):
            raise AuthError(
                f"this request from {remote} is signed for another farm (farm id {_shown(farm)}); this peer "
                f"belongs to farm id {self.identity.farm_id!r}. To move that computer to this farm, {_JOIN_HINT}"
            )
        if not _PEER_ID.match(peer_id):
            raise AuthError(f"header {HEADER_PEER} of this request from {remote} is not a peer id: {_shown(peer_id)}")
        if not time_text.isdigit() or len(time_text) > 16:
            raise AuthError(
                f"header {HEADER_TIME} of this request from {remote} must be Unix time in milliseconds, "
                f"got {_shown(time_text)}"
            )
        if not _NONCE.match(nonce):
            raise AuthError(
                f"header {HEADER_NONCE} of this request from {remote} must be 16-64 of [A-Za-z0-9_-], "
                f"got {_shown(nonce)}"
            )
        if not _SIGNATURE.match(signature):
            raise AuthError(
                f"header {HEADER_SIGNATURE} of this request from {remote} must be 64 lowercase hex digits"
            )
        time_ms = int(time_text)
        now_ms = int(self.clock() * 1000)
        skew_ms = now_ms - time_ms
        if abs(skew_ms) > self.max_skew_ms:
            when = "ago" if skew_ms > 0 else "in the future"
            raise AuthError(
                f"this request from {remote} was signed {abs(skew_ms) / 1000:.0f} s {when} by this peer's clock, "
                f"outside the ±{self.max_skew_ms / 1000:.0f} s window: either it is a replay or the two computers' "
                "clocks disagree; set both clocks right (turn on network time) and send it again"
            )
        self._check_fresh(remote, nonce, time_ms)
        return SignedHeaders(remote=remote, peer_id=peer_id, time_ms=time_ms, nonce=nonce, signature=signature)

    def _check_fresh(self, remote: str, nonce: str, time_ms: int) -> None:
        if nonce in self._seen:
            raise AuthError(
                f"this request from {remote} repeats a nonce this peer has already accepted: a replayed request "
                "is refused; send a new request (sign_headers makes a new nonce every time)"
            )
        if time_ms <= self._floor_ms:
            raise AuthError(
                f"this request from {remote} is older than the requests this peer still remembers (its replay "
                "cache is full); sign it again and resend"
            )

    def check_signature(self, signed: SignedHeaders, method: str, path_qs: str, body: bytes) -> PeerAuth:
        """Check the HMAC over the whole request and remember the nonce; raises ``AuthError``."""
        canonical = _canonical(
            self.identity.farm_id, signed.peer_id, method, path_qs, signed.time_ms, signed.nonce, body,
        )
        if not hmac.compare_digest(_signature(self._key, canonical), signed.signature):
            raise AuthError(
                f"the farm signature of this request from {signed.remote} does not match: the sender holds a "
                f"different secret for farm {self.identity.farm_id!r}, or the request was changed on the way; "
                f"{_JOIN_HINT}"
            )
        # Checked again: another request with this nonce may have been accepted while this body was read.
        self._check_fresh(signed.remote, signed.nonce, signed.time_ms)
        self._remember(signed.nonce, signed.time_ms)
        return PeerAuth(kind="peer", remote=signed.remote, peer_id=signed.peer_id)

    def _remember(self, nonce: str, time_ms: int) -> None:
        self._forget_expired(int(self.clock() * 1000))
        while len(self._seen) >= self.nonce_capacity:
            old_time, old_nonce = heapq.heappop(self._by_time)
            del self._seen[old_nonce]
            self._floor_ms = max(self._floor_ms, old_time)
        self._seen[nonce] = time_ms
        heapq.heappush(self._by_time, (time_ms, nonce))

    def verify(self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes, *, remote: str) -> PeerAuth:
        """Both checks in one call, for callers that already hold the body."""
        return self.check_signature(self.check_headers(headers, remote), method, path_qs, body)


# --- browser sessions (for the dashboard) ---------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def issue_session_cookie(
    identity: FarmIdentity, *, max_age_s: float = DEFAULT_SESSION_AGE_S, now: float | None = None,
) -> str:
    """A cookie value for a browser that presented a valid join code (see
    ``FarmIdentity.accepts_join_code``). Set it with ``HttpOnly`` and ``SameSite=Strict``.
    Every session of a farm ends when the farm gets a new secret."""
    expires = int((time.time() if now is None else now) + max_age_s)
    body = f"v1.{expires}.{_b64(secrets.token_bytes(12))}"
    mac = hmac.new(identity.derive_key("browser session"), body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def session_cookie_valid(identity: FarmIdentity, value: str, *, now: float | None = None) -> bool:
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
        return False
    body = ".".join(parts[:3])
    expected = _b64(hmac.new(identity.derive_key("browser session"), body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.encode(), parts[3].encode()):
        return False
    return int(parts[1]) > (time.time() if now is None else now)


# --- the server middleware -------------------------------------------------------------


# Cached: every request asks about the same few addresses, and parsing them was
# a noticeable share of a busy coordinator's Python time.
@functools.lru_cache(maxsize=256)
def is_loopback(remote: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything unparsable."""
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


@functools.lru_cache(maxsize=256)
def _names_this_computer(host: str | None, own_names: frozenset[str]) -> bool:
    if not host:
        return False
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost") or host in own_names or is_loopback(host)


def _origin_of(value: str) -> tuple[str | None, int | None]:
    """Host and port of an ``Origin`` (a URL) or a ``Host`` header (host[:port])."""
    try:
        url = URL(value) if "://" in value else URL(f"http://{value}")
        return url.host, url.port
    except ValueError:
        return None, None


@functools.lru_cache(maxsize=256)
def _host_of(value: str) -> str | None:
    return _origin_of(value)[0]


def _browser_refusal(request: web.Request, own_names: frozenset[str]) -> str | None:
    """Why a credential-free loopback request is really a web page acting for another site."""
    origin = request.headers.get("Origin")
    if origin is not None and not _names_this_computer(_host_of(origin), own_names):
        return (
            f"this request reached the peer from this computer, but a web page at {_shown(origin)} sent it; "
            "the farm takes no requests from other web sites. Use the dashboard this peer serves, "
            "on http://127.0.0.1 or http://localhost"
        )
    host = request.headers.get("Host")
    if host is not None and not _names_this_computer(_host_of(host), own_names):
        return (
            f"this request reached the peer from this computer under the host name {_shown(host)}, which is not "
            "this computer's; open the dashboard as http://127.0.0.1:PORT or http://localhost:PORT"
        )
    return None


def _refuse(message: str) -> web.Response:
    return web.json_response(
        {"code": 401, "message": message}, status=401, headers={"WWW-Authenticate": SCHEME},
    )


def auth_middleware(
    verifier: Verifier, *, trust_loopback: bool = True, accept_session_cookie: bool = False,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Let loopback clients through, demand a farm signature from everyone else.

    Put it first in the application's middlewares, so nothing else runs for a
    refused request. ``accept_session_cookie`` lets a browser with a valid
    ``SESSION_COOKIE`` in (the dashboard's login); a cross-site ``Origin`` is refused.
    """
    own_names = frozenset({socket.gethostname().lower(), socket.gethostname().split(".")[0].lower()})

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        remote = request.remote or "an unknown address"
        signed = any(name in request.headers for name in SIGNATURE_HEADERS)
        if signed:
            try:
                pending = verifier.check_headers(request.headers, remote)
                body = await request.read()
                request[PEER_AUTH] = verifier.check_signature(pending, request.method, request.raw_path, body)
            except AuthError as exc:
                return _refuse(exc.message)
            return await handler(request)
        if trust_loopback and is_loopback(request.remote):
            refusal = _browser_refusal(request, own_names)
            if refusal:
                return _refuse(refusal)
            request[PEER_AUTH] = PeerAuth(kind="local", remote=remote)
            return await handler(request)
        if accept_session_cookie:
            cookie = request.cookies.get(SESSION_COOKIE)
            if cookie and session_cookie_valid(verifier.identity, cookie):
                origin = request.headers.get("Origin")
                if origin is not None and _origin_of(origin) != _origin_of(request.headers.get("Host", "")):
                    return _refuse(
                        f"this request from {remote} was sent by a web page at {_shown(origin)}, another site "
                        "than this dashboard's; the farm takes no requests from other web sites"
                    )
                request[PEER_AUTH] = PeerAuth(kind="browser", remote=remote)
                return await handler(request)
        return _refuse(_unsigned_message(remote))

    return authenticate
