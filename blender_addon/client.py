# SPDX-License-Identifier: GPL-3.0-or-later
"""HTTP client for a Flamenco Peer or a Flamenco Manager (API v3).

Standard library only, and no bpy: the same client serves both modes, and it
runs in background threads as well as in operators. Every call has a short
timeout so Blender's UI never waits long on a farm that does not answer.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

# Reads: the panel polls these; a slow answer must not freeze Blender.
READ_TIMEOUT_S = 3.0
# A submission may wait for the farm to elect a coordinator (up to ~5 s).
SUBMIT_TIMEOUT_S = 15.0
# This computer's peer packs the project while it answers the check and the
# submission: it hashes and copies the .blend and everything it uses into its
# store, a few seconds per GB (measured 1.5-4.5 s/GB on a warm disk). Giving up
# earlier would report a failure for a job the peer goes on to submit.
PACKING_SUBMIT_TIMEOUT_S = 600.0

FLAMENCO_API_MAJOR = "3"


class FarmError(Exception):
    """A failure the user can act on; ``str()`` names the cause and the fix."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class FarmTimeout(FarmError):
    """The farm accepted the connection but did not answer in time: it may still act on the request."""


@dataclass
class FarmClient:
    base_url: str
    # "Flamenco Manager" or "Flamenco Peer": used in messages.
    what: str = "Flamenco Peer"
    # Appended to "cannot reach" messages: how to fix it in this mode.
    unreachable_hint: str = ""
    timeout: float = READ_TIMEOUT_S
    # For the job check and the submission (see PACKING_SUBMIT_TIMEOUT_S).
    submit_timeout: float = SUBMIT_TIMEOUT_S

    def __post_init__(self) -> None:
        url = self.base_url.strip()
        if url and "://" not in url:
            url = f"http://{url}"
        self.base_url = url.rstrip("/")

    # --- transport --------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, timeout: float | None = None) -> tuple[int, Any]:
        if not self.base_url:
            raise FarmError(self.unreachable_hint or f"no {self.what} address is set")
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        try:
            req = urllib.request.Request(url, data=data, method=method)
        except ValueError:
            raise FarmError(f"{self.base_url!r} is not a valid address; write it like http://host:8080") from None
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with opener_for(url).open(req, timeout=timeout or self.timeout) as resp:
                return resp.status, _decode(resp.read(), resp.headers.get_content_type())
        except urllib.error.HTTPError as exc:
            ctype = exc.headers.get_content_type() if exc.headers else ""
            return exc.code, _decode(exc.read(), ctype)
        except (http.client.HTTPException, ValueError) as exc:
            raise FarmError(
                f"{self.base_url} did not answer like a {self.what} ({type(exc).__name__}); check the address"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            timed_out = isinstance(reason, socket.timeout) or isinstance(exc, TimeoutError)
            if timed_out:
                reason = f"no answer within {timeout or self.timeout:.0f} s"
            error = FarmTimeout if timed_out else FarmError
            raise error(f"cannot reach the {self.what} at {self.base_url} ({reason}). {self.unreachable_hint}".strip()) from None

    def _expect(self, path: str, response: tuple[int, Any], *, ok: tuple[int, ...] = (200,)) -> Any:
        status, payload = response
        if status in ok:
            if status != 204 and not isinstance(payload, dict):
                raise FarmError(f"{self.base_url}{path} did not answer with Flamenco API JSON; "
                                f"is {self.base_url} a {self.what}?", status)
            return payload
        raise FarmError(self._error_message(path, status, payload), status)

    def _error_message(self, path: str, status: int, payload: Any) -> str:
        message = payload.get("message") if isinstance(payload, dict) else None
        if message:
            return f"{self.what} refused {path}: {message} (HTTP {status})"
        if status == 404:
            return f"{self.base_url}{path} does not exist (HTTP 404); is {self.base_url} a {self.what}?"
        return f"{self.what} answered HTTP {status} to {path}"

    def get(self, path: str) -> Any:
        return self._expect(path, self.request("GET", path))

    # --- Flamenco API v3 --------------------------------------------------

    def version(self) -> dict[str, Any]:
        """``FlamencoVersion``; refuses a server that does not speak API v3."""
        info = self.get("/api/v3/version")
        version = str(info.get("version", ""))
        short = str(info.get("shortversion") or version)
        if not short.startswith(FLAMENCO_API_MAJOR + "."):
            raise FarmError(
                f"{self.base_url} runs Flamenco {version or '(unknown version)'}; this add-on speaks Flamenco "
                f"API v{FLAMENCO_API_MAJOR} (Manager {FLAMENCO_API_MAJOR}.x). Point it to a Flamenco 3 Manager or a peer."
            )
        return info

    def job_types(self) -> list[dict[str, Any]]:
        payload = self.get("/api/v3/jobs/types")
        types = payload.get("job_types")
        if not isinstance(types, list):
            raise FarmError(f"{self.base_url} sent job types without a 'job_types' list")
        return [t for t in types if isinstance(t, dict) and isinstance(t.get("name"), str)]

    def check_job(self, job: dict[str, Any]) -> None:
        """Compile the job without storing it (``/api/v3/jobs/check``, Flamenco 3.2+)."""
        status, payload = self.request("POST", "/api/v3/jobs/check", job, timeout=self.submit_timeout)
        if status in (204, 200):
            return
        if status in (404, 405):
            return  # an older Manager without the check: the submission itself will tell
        raise FarmError(self._submit_error(job, status, payload), status)

    def submit_job(self, job: dict[str, Any]) -> dict[str, Any]:
        try:
            status, payload = self.request("POST", "/api/v3/jobs", job, timeout=self.submit_timeout)
        except FarmTimeout:
            # The request arrived: the job may be created after we stop waiting.
            raise FarmError(
                f"The {self.what} at {self.base_url} did not confirm the job within {self.submit_timeout:g} s. "
                f"It may still be sending the project's files, and the job may yet appear on the farm: "
                f"check the dashboard before submitting again."
            ) from None
        if status == 200 and isinstance(payload, dict) and payload.get("id"):
            return payload
        if status == 200:
            raise FarmError(f"{self.what} accepted the job but sent no job id back")
        raise FarmError(self._submit_error(job, status, payload), status)

    def _submit_error(self, job: dict[str, Any], status: int, payload: Any) -> str:
        message = payload.get("message") if isinstance(payload, dict) else None
        if status == 412:
            return (f"the job type {job.get('type')!r} changed on the farm since this add-on fetched it "
                    "(etag mismatch). Press Refresh, check the settings and submit again.")
        if message:
            return f"{self.what} refused the job: {message}"
        return f"{self.what} refused the job (HTTP {status})"

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/api/v3/jobs/{urllib.parse.quote(job_id)}")

    def manager_status(self) -> str:
        """``FarmStatusReport.status`` of a Flamenco Manager (3.8+); '' when it has none."""
        status, payload = self.request("GET", "/api/v3/status")
        if status == 200 and isinstance(payload, dict):
            return str(payload.get("status", ""))
        return ""

    # --- Flamenco Peer only ------------------------------------------------

    def farm_status(self) -> dict[str, Any] | None:
        """The peer's view of its farm; ``None`` for a Flamenco Manager (it has no such path)."""
        status, payload = self.request("GET", "/peer/v1/cluster/status")
        if status == 404:
            return None
        return self._expect("/peer/v1/cluster/status", (status, payload))


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_DEFAULT = urllib.request.build_opener()


def opener_for(url: str) -> urllib.request.OpenerDirector:
    """This computer's peer is always reached directly, whatever proxy the environment sets."""
    host = urllib.parse.urlsplit(url).hostname or ""
    return _DIRECT if host in ("localhost", "::1") or host.startswith("127.") else _DEFAULT


def _decode(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if content_type == "application/json":
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
    return raw.decode("utf-8", errors="replace")


@dataclass
class FarmSummary:
    """What the panel shows about a farm, derived from the peer's status."""

    peers_alive: int
    coordinator: str
    workers_idle: int
    workers_busy: int
    this_peer: str
    this_role: str
    note: str = ""


def summarize_peer_status(status: dict[str, Any]) -> FarmSummary:
    me = status.get("self") or {}
    peers = [p for p in status.get("peers") or [] if isinstance(p, dict) and p.get("alive")]
    everyone = [me, *peers]
    coord = status.get("coordinator") or {}
    coord_id = coord.get("peer_id") or ""
    coordinator = ""
    if coord.get("url"):
        named = next((p.get("name") for p in everyone if p.get("peer_id") == coord_id and p.get("name")), None)
        coordinator = named or coord["url"]
    idle = busy = 0
    for peer in everyone:
        worker = peer.get("worker")
        if isinstance(worker, dict) and worker.get("enabled", True):
            if worker.get("current_task"):
                busy += 1
            else:
                idle += 1
    note = ""
    if me.get("eligible") is False:
        note = f"This peer cannot coordinate: {me.get('ineligible_reason') or 'no reason given'}"
    elif not coordinator:
        note = me.get("waiting_reason") or "electing a coordinator"
    return FarmSummary(
        peers_alive=len(everyone) if me else len(peers), coordinator=coordinator,
        workers_idle=idle, workers_busy=busy, this_peer=str(me.get("name", "")),
        this_role=str(me.get("role", "")), note=note,
    )
