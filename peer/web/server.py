"""HTTP routes of the dashboard: the page, its static files, the login, the live feed.

Every peer serves the dashboard at ``/``. The page itself is static; it reads
the farm through the same JSON API as the CLI (``/api/v3/...``, which any peer
forwards to the coordinator, and ``/peer/v1/cluster/status``), and listens to
``/peer/v1/events/stream`` (server-sent events) to know when to read again.

Who may look: the peer's auth middleware decides, exactly as for the API.
Loopback needs nothing. A browser on another computer needs the farm's join
code once (``POST /login``), which buys a session cookie; until then ``/``
shows a page that explains where to get the code, and the API answers 401.
The login form and the static files are the only things served ahead of the
auth middleware (see ``gate``): they hold nothing about the farm.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from pathlib import Path
from string import Template
from urllib.parse import quote
from typing import Any, Awaitable, Callable

from aiohttp import web
from yarl import URL

from .. import __version__
from ..cluster.auth import (
    DEFAULT_SESSION_AGE_S, PEER_AUTH, SESSION_COOKIE, issue_session_cookie, session_cookie_valid,
)
from ..cluster.identity import FarmIdentity, JoinCodeError, parse_join_code
from ..cluster.manager import ClusterManager
from ..coordinator.service import Coordinator
from .feed import FarmChangeFeed

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/web/static/"
INFO_PATH = "/web/info"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
EVENTS_PATH = "/peer/v1/events/stream"
KEEPALIVE_S = 15.0
# How long a browser waits before reconnecting a dropped stream it did not close itself.
SSE_RETRY_MS = 2000
MAX_LOGIN_BODY = 4096

_STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The dashboard runs only its own code and never inside another site's frame
# (clickjacking its buttons would act on the farm).
_HTML_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: Chrome then sends "Origin: null" with form posts, which the login refuses.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DashboardFiles:
    """The packaged page, script, style sheet and login template, read once when the peer starts."""

    def __init__(self, folder: Path = STATIC_DIR) -> None:
        try:
            self.index = (folder / "index.html").read_bytes()
            self.login = Template((folder / "login.html").read_text(encoding="utf-8"))
            self.static = {name: (folder / name).read_bytes() for name in _STATIC_FILES}
        except OSError as exc:
            raise RuntimeError(
                f"the dashboard's files are missing from {folder} ({exc.strerror or exc}); "
                "reinstall flamenco-peer (the wheel ships peer/web/static/)"
            ) from None


FILES_KEY = web.AppKey("dashboard_files", DashboardFiles)
FEED_KEY = web.AppKey("dashboard_feed", FarmChangeFeed)
IDENTITY_KEY = web.AppKey("dashboard_identity", FarmIdentity)
KEEPALIVE_KEY = web.AppKey("dashboard_keepalive_s", float)
FEATURES_KEY = web.AppKey("dashboard_features", dict)
PEER_NAME_KEY = web.AppKey("dashboard_peer_name", str)

routes = web.RouteTableDef()


# --- what the API of this peer offers ------------------------------------------------------

# Dashboard sections that need endpoints other issues add (failures and idleness:
# blocklists, worker sleep/wake; file transfer: last rendered images). Each shows
# only when this peer routes it. Placeholder names do not matter.
OPTIONAL_ENDPOINTS: dict[str, list[tuple[str, str]]] = {
    "cluster": [("GET", "/peer/v1/cluster/status")],
    "blocklist": [("GET", "/api/v3/jobs/{}/blocklist"), ("DELETE", "/api/v3/jobs/{}/blocklist")],
    "worker_sleep": [("POST", "/api/v3/worker-mgt/workers/{}/setstatus")],
    "last_rendered": [("GET", "/api/v3/jobs/{}/last-rendered")],
    "global_last_rendered": [("GET", "/api/v3/jobs/last-rendered")],
    "job_type_errors": [("GET", "/peer/v1/job-types/errors")],
}
_PLACEHOLDER = re.compile(r"\{[^}]*\}")


def routed_features(app: web.Application) -> dict[str, bool]:
    """Which optional sections this peer can fill, from its route table."""
    present = {
        (route.method, _PLACEHOLDER.sub("{}", route.resource.canonical))
        for route in app.router.routes() if route.resource is not None
    }
    return {name: all(need in present for need in needs) for name, needs in OPTIONAL_ENDPOINTS.items()}


# --- the page ----------------------------------------------------------------------------


@routes.get("/")
async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=request.app[FILES_KEY].index, content_type="text/html", charset="utf-8",
                        headers=_HTML_HEADERS)


@routes.get("/app")
@routes.get("/app/{tail:.*}")
async def flamenco_app_paths(request: web.Request) -> web.Response:
    """Flamenco's web app lives under /app/ (/app/jobs/JOB/TASK, /app/workers); links made
    for it (the Blender add-on's "open in browser") land on the same view here."""
    parts = [p for p in request.match_info.get("tail", "").split("/") if p]
    target = "/"
    if parts[:1] == ["jobs"] and len(parts) >= 2:
        target = "/#/job/" + quote(parts[1], safe="")
        if len(parts) >= 3:
            target += "/task/" + quote(parts[2], safe="")
    elif parts[:1] == ["workers"]:
        target = "/#workers"
    return _see_other(target)


@routes.get(STATIC_PREFIX + "{name}")
async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = request.app[FILES_KEY].static.get(name)
    if body is None:
        return web.Response(status=404, text=f"no dashboard file named {name!r}")
    return web.Response(body=body, headers={"Content-Type": _STATIC_FILES[name], "Cache-Control": "no-cache",
                                            "X-Content-Type-Options": "nosniff"})


@routes.get(INFO_PATH)
async def info(request: web.Request) -> web.Response:
    """Who this peer is and which sections it can fill; the page's first call."""
    app = request.app
    identity = app.get(IDENTITY_KEY)
    auth = request.get(PEER_AUTH)
    return web.json_response({
        "peer": {"name": app[PEER_NAME_KEY]},
        "farm": {"name": identity.name, "id": identity.farm_id} if identity else None,
        "version": __version__,
        "viewer": auth.kind if auth else "local",
        "login_enabled": identity is not None,
        "features": app[FEATURES_KEY],
        "events": EVENTS_PATH,
    })


# --- live updates --------------------------------------------------------------------------


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@routes.get(EVENTS_PATH)
async def events_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``hello`` once, then ``changed`` whenever the farm changes.

    Payloads name what changed (event kinds, tasks with new log lines,
    whether the coordinator or the live peers changed), never the data.
    A comment line every ``KEEPALIVE_S`` keeps proxies and idle timers from
    closing the stream and lets the peer notice a browser that went away.
    """
    feed = request.app[FEED_KEY]
    keepalive_s = request.app[KEEPALIVE_KEY]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache, no-transform",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    sub = feed.subscribe()
    try:
        await response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
        await response.write(_sse("hello", (await feed.current()).to_json()))
        while True:
            change = await sub.next(keepalive_s)
            if sub.closed:
                break
            if change is None:
                await response.write(b": keep-alive\n\n")
            else:
                await response.write(_sse("changed", change.to_json()))
    except ConnectionError:
        pass  # the browser went away; it reconnects if it wants more
    finally:
        feed.unsubscribe(sub)
    return response


# --- login for browsers on other computers ---------------------------------------------------


def _page(request: web.Request, status: int, *, message: str = "", detail: str = "") -> web.Response:
    identity = request.app.get(IDENTITY_KEY)
    remote = request.remote or "another computer"
    if identity is None:
        form_hidden, disabled_note = "hidden", (
            "This peer does not accept logins from other computers. Open the dashboard on the peer's own "
            "computer, at http://127.0.0.1:PORT/ (the port `flamenco-peer run` printed)."
        )
    else:
        form_hidden, disabled_note = "", ""
    text = request.app[FILES_KEY].login.safe_substitute(
        remote=html.escape(remote),
        message=html.escape(message),
        message_hidden="" if message else "hidden",
        detail=html.escape(detail),
        detail_hidden="" if detail else "hidden",
        form_hidden=form_hidden,
        disabled_note=html.escape(disabled_note),
        disabled_hidden="" if disabled_note else "hidden",
    )
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8", headers=_HTML_HEADERS)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _same_site(request: web.Request) -> bool:
    """A form post from this dashboard, or from a client that sends no Origin (not a web page)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        sent = URL(origin)
        own = URL(f"http://{request.headers.get('Host', '')}")
        return (sent.host, sent.port) == (own.host, own.port)
    except ValueError:
        return False


def _why_refused(code: str, identity: FarmIdentity) -> str | None:
    if not code:
        return "Enter the farm's join code: it starts with FP1-."
    try:
        parse_join_code(code)
    except JoinCodeError as exc:
        return f"That is not a usable join code: {exc}"
    if not identity.accepts_join_code(code):
        return (
            "That join code belongs to another farm (or to this farm before it got a new secret). "
            "Run `flamenco-peer farm join-code` on a computer of this farm and copy the whole code."
        )
    return None


@routes.post(LOGIN_PATH)
async def login(request: web.Request) -> web.StreamResponse:
    identity = request.app.get(IDENTITY_KEY)
    if identity is None:
        return _page(request, 403, message="This peer does not accept logins from other computers.")
    if not _same_site(request):
        return _page(request, 403, message="This login came from a page of another web site; "
                                           "use the form this dashboard shows.")
    if (request.content_length or 0) > MAX_LOGIN_BODY:
        return _page(request, 413, message="That login form is far too large; enter only the join code.")
    try:
        form = await request.post()
    except ValueError:
        return _page(request, 400, message="The login form could not be read; enter the join code again.")
    code = str(form.get("code") or "").strip()
    why = _why_refused(code, identity)
    if why is not None:
        log.info("dashboard login refused for %s", request.remote)
        return _page(request, 401, message=why)
    response = _see_other("/")
    response.set_cookie(
        SESSION_COOKIE, issue_session_cookie(identity), max_age=int(DEFAULT_SESSION_AGE_S),
        httponly=True, samesite="Strict", path="/",
    )
    log.info("dashboard login for %s", request.remote)
    return response


@routes.get(LOGIN_PATH)
async def login_form(request: web.Request) -> web.StreamResponse:
    """Bookmarks of the login page land on the dashboard, which asks again if needed."""
    return _see_other("/")


@routes.post(LOGOUT_PATH)
async def logout(request: web.Request) -> web.StreamResponse:
    response = _see_other("/")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


# --- wiring ------------------------------------------------------------------------------


def _refusal_message(response: web.StreamResponse) -> str:
    if isinstance(response, web.Response) and response.body is not None and response.content_type == "application/json":
        try:
            return str(json.loads(bytes(response.body)).get("message", ""))  # type: ignore[arg-type]
        except (ValueError, AttributeError):
            return ""
    return ""


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Put in front of the auth middleware: lets strangers reach the login form, and
    answers a refused ``GET /`` with the page that says how to get in."""
    # Decided by the handler the router picked, not by the path text, so no
    # spelling of a path can reach anything else past the auth middleware.
    if request.match_info.http_exception is None and request.match_info.handler in _PUBLIC_HANDLERS:
        return await request.match_info.handler(request)
    response = await handler(request)
    if response.status == 401 and request.path == "/" and request.method in ("GET", "HEAD"):
        identity = request.app.get(IDENTITY_KEY)
        cookie = request.cookies.get(SESSION_COOKIE)
        expired = bool(cookie and identity and not session_cookie_valid(identity, cookie))
        message = "Your dashboard session has ended; enter the join code again." if expired else ""
        return _page(request, 401, message=message, detail=_refusal_message(response))
    return response


# Served to anyone: they reveal nothing about the farm, and a stranger needs
# them to log in at all.
_PUBLIC_HANDLERS = frozenset({login, login_form, logout, static_file, flamenco_app_paths})


def cluster_view(cluster: ClusterManager) -> Callable[[], dict[str, Any]]:
    """What the change feed watches besides the event log: the coordinator, the live
    peers and their workers' states (from heartbeats)."""
    def view() -> dict[str, Any]:
        alive = cluster.membership.alive()
        workers = {m.peer_id: m.state.get("worker") for m in alive}
        workers[cluster.settings.peer_id] = cluster.worker_state() if cluster.worker_state else None
        return {
            "role": cluster.role, "coordinator": cluster.leader_id, "epoch": cluster.epoch,
            "alive": [m.peer_id for m in alive], "workers": workers,
        }
    return view


def install(
    app: web.Application, *, name: str, coordinator: Coordinator, cluster: ClusterManager | None = None,
    identity: FarmIdentity | None = None, keepalive_s: float = KEEPALIVE_S,
) -> None:
    """Serve the dashboard from ``app``. Put ``gate`` ahead of the auth middleware
    (``build_app`` does). Without ``identity`` no browser can log in from another computer."""
    app[PEER_NAME_KEY] = name
    app[FEED_KEY] = FarmChangeFeed(coordinator, cluster_view(cluster) if cluster is not None else None)
    app[KEEPALIVE_KEY] = keepalive_s
    if identity is not None:
        app[IDENTITY_KEY] = identity
    app.add_routes(routes)

    async def prepare(app: web.Application) -> None:
        app[FILES_KEY] = await asyncio.to_thread(DashboardFiles)  # file reads stay off the event loop
        app[FEATURES_KEY] = routed_features(app)

    async def end_streams(app: web.Application) -> None:
        # Before aiohttp waits for open requests: streams would hold shutdown up.
        await app[FEED_KEY].close()

    app.on_startup.append(prepare)
    app.on_shutdown.append(end_streams)


