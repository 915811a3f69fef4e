"""A small synchronous client for the Flamenco v3 API (standard library only).

The CLI uses it against its local peer; it works the same against a real
Flamenco Manager for the operations both have.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class ClientError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class FlamencoClient:
    base_url: str
    timeout: float = 30.0

    def __post_init__(self) -> None:
        # `--peer host:port` is how people write it; `run --join` accepts it too.
        if "://" not in self.base_url:
            self.base_url = f"http://{self.base_url}"

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = self.base_url.rstrip("/") + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _decode(resp.read(), resp.headers.get_content_type())
        except urllib.error.HTTPError as exc:
            payload = _decode(exc.read(), exc.headers.get_content_type() if exc.headers else "")
            message = payload.get("message") if isinstance(payload, dict) else None
            raise ClientError(message or f"HTTP {exc.code} from {url}", exc.code) from None
        except http.client.HTTPException as exc:
            raise ClientError(
                f"{self.base_url} did not answer like an HTTP server ({type(exc).__name__}); "
                "is --peer pointing to a Flamenco peer?"
            ) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(
                f"cannot reach a peer at {self.base_url} ({reason}). Start one with `flamenco-peer run`, "
                "or point to another with --peer URL."
            ) from None

    def get(self, path: str) -> Any:
        return self._api_json(path, self.request("GET", path))

    def post(self, path: str, body: Any) -> Any:
        return self._api_json(path, self.request("POST", path, body))

    def _api_json(self, path: str, response: tuple[int, Any]) -> Any:
        status, payload = response
        if status != 204 and not isinstance(payload, dict):
            raise ClientError(
                f"{self.base_url}{path} did not answer with Flamenco API JSON; "
                "is --peer pointing to a Flamenco peer or Manager?"
            )
        return payload

    # Flamenco v3 operations used by the CLI.
    def job_types(self) -> list[dict[str, Any]]:
        return self.get("/api/v3/jobs/types")["job_types"]

    def job_type(self, name: str) -> dict[str, Any]:
        return self.get(f"/api/v3/jobs/type/{name}")

    def submit(self, job: dict[str, Any]) -> dict[str, Any]:
        return self.post("/api/v3/jobs", job)

    def jobs(self) -> list[dict[str, Any]]:
        return self.get("/api/v3/jobs")["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/api/v3/jobs/{job_id}")

    def tasks(self, job_id: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v3/jobs/{job_id}/tasks")["tasks"]

    def task(self, task_id: str) -> dict[str, Any]:
        return self.get(f"/api/v3/tasks/{task_id}")

    def set_job_status(self, job_id: str, status: str, reason: str) -> None:
        self.post(f"/api/v3/jobs/{job_id}/setstatus", {"status": status, "reason": reason})

    def set_job_priority(self, job_id: str, priority: int) -> None:
        self.post(f"/api/v3/jobs/{job_id}/setpriority", {"priority": priority})

    def delete_job(self, job_id: str) -> None:
        self.request("DELETE", f"/api/v3/jobs/{job_id}")

    def task_log(self, task_id: str) -> str:
        info = self.get(f"/api/v3/tasks/{task_id}/log")
        if not info:
            return ""
        status, text = self.request("GET", info["url"])
        return text if isinstance(text, str) else ""

    def farm_status(self) -> dict[str, Any]:
        """The peer's view of the farm (Flamenco Peer only, not a Flamenco Manager)."""
        try:
            status, body = self.request("GET", "/peer/v1/cluster/status")
        except ClientError as exc:
            if exc.status == 404:
                raise ClientError(f"{self.base_url} is not a Flamenco Peer (a Flamenco Manager has no farm status); "
                                  "use its web interface instead", 404) from None
            raise
        return self._api_json("/peer/v1/cluster/status", (status, body))

    def job_blocklist(self, job_id: str) -> list[dict[str, Any]]:
        _, body = self.request("GET", f"/api/v3/jobs/{job_id}/blocklist")
        return body if isinstance(body, list) else []

    def clear_blocklist(self, job_id: str, entries: list[dict[str, str]] | None = None) -> None:
        path = f"/api/v3/jobs/{job_id}/blocklist"
        self._api_json(path, self.request("DELETE", path, entries))

    def job_type_errors(self) -> list[dict[str, Any]]:
        """Scripts that failed to load (Flamenco Peer only; empty for a Flamenco Manager)."""
        try:
            status, body = self.request("GET", "/peer/v1/job-types/errors")
        except ClientError:
            return []  # a Flamenco Manager, or an older peer
        return body if status == 200 and isinstance(body, list) else []

    def workers(self) -> list[dict[str, Any]]:
        return self.get("/api/v3/worker-mgt/workers")["workers"]

    def set_worker_status(self, worker_id: str, status: str, *, is_lazy: bool = False) -> None:
        """Ask a worker to be "asleep" or "awake" (``is_lazy``: after its current task)."""
        path = f"/api/v3/worker-mgt/workers/{worker_id}/setstatus"
        self._api_json(path, self.request("POST", path, {"status": status, "is_lazy": is_lazy}))


def _decode(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if content_type == "application/json":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return None
    return raw.decode("utf-8", errors="replace")
