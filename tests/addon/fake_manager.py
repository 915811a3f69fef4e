"""A fake Flamenco Manager that checks every request against Flamenco's OpenAPI document.

It answers the calls the add-on makes in Manager mode (version, status, job
types, job check, submission, job fetch) with documented payloads, and
records each request together with the validation problem, if any. Any path
outside the API (e.g. the peer-only ``/peer/v1/cluster/status``) gets 404,
as from a real Manager.
"""

from __future__ import annotations

import datetime
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.openapi import OpenAPIValidationError, load_spec


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    problem: str = ""


@dataclass
class FakeManager:
    job_types: list[dict[str, Any]]
    version: str = "3.8"
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spec = load_spec()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-manager", daemon=True)

    def __enter__(self) -> "FakeManager":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def problems(self) -> list[str]:
        return [f"{r.method} {r.path}: {r.problem}" for r in self.requests if r.problem]

    def submitted(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.method == "POST" and r.path == "/api/v3/jobs"]

    # --- answers ---------------------------------------------------------

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        if method == "GET" and path == "/api/v3/version":
            return 200, {"version": self.version, "shortversion": self.version, "name": "Fake Manager",
                         "git": f"v{self.version}"}
        if method == "GET" and path == "/api/v3/status":
            return 200, {"status": "idle"}
        if method == "GET" and path == "/api/v3/jobs/types":
            return 200, {"job_types": self.job_types}
        if method == "POST" and path in ("/api/v3/jobs/check", "/api/v3/jobs"):
            known = {t["name"]: t for t in self.job_types}
            if str(body.get("name", "")).startswith("fail-412"):
                return 412, {"code": 412, "message": "rejecting submitted job because its settings are outdated"}
            if body.get("type") not in known:
                return 400, {"code": 400, "message": f"unknown job type {body.get('type')!r}"}
            if body.get("type_etag") and body["type_etag"] != known[body["type"]]["etag"]:
                return 412, {"code": 412, "message": "rejecting submitted job because its settings are outdated"}
            if path == "/api/v3/jobs/check":
                return 204, None
            job_id = str(uuid.uuid4())
            job = {key: body[key] for key in ("name", "type", "priority", "settings", "metadata", "submitter_platform")
                   if key in body}
            job.update(id=job_id, created=now, updated=now, status="queued", activity="Queued",
                       steps_completed=0, steps_total=4)
            self.jobs[job_id] = job
            return 200, job
        if method == "GET" and path.startswith("/api/v3/jobs/"):
            job = self.jobs.get(path.rsplit("/", 1)[1])
            if job is None:
                return 404, {"code": 404, "message": "no such job"}
            return 200, job
        return 404, None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        manager = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                record = Recorded(method, self.path, None)
                manager.requests.append(record)
                try:
                    record.body = json.loads(raw) if raw else None
                except ValueError as exc:
                    record.problem = f"request body is not JSON: {exc}"
                in_api = self.path.startswith("/api/v3/")
                if in_api and not record.problem:
                    try:
                        manager.spec.validate_request(method, self.path, record.body)
                    except OpenAPIValidationError as exc:
                        record.problem = str(exc)
                elif not in_api and self.path != "/peer/v1/cluster/status":
                    record.problem = "the add-on called a path outside Flamenco API v3"
                status, payload = (400, {"code": 400, "message": record.problem}) if record.problem else \
                    manager.answer(method, self.path, record.body)
                if in_api and not record.problem:
                    try:
                        manager.spec.validate_response(method, self.path, status, payload)
                    except OpenAPIValidationError as exc:  # the fake itself is wrong
                        record.problem = f"fake Manager answer invalid: {exc}"
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        return Handler
