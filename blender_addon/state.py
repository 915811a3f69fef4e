# SPDX-License-Identifier: GPL-3.0-or-later
"""What the add-on knows about the farm, shared by panels and operators.

Job types are cached on disk (like Flamenco's ``flamenco-manager-info.json``)
so the job-type dropdown works right after Blender starts, before the farm
has been asked again. No bpy here; the cache path is given by the caller.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE_NAME = "flamenco-peer-addon.json"


@dataclass
class JobProgress:
    job_id: str
    name: str
    base_url: str
    status: str = "queued"
    activity: str = ""
    steps_completed: int = 0
    steps_total: int = 0
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "canceled")

    @property
    def fraction(self) -> float:
        if self.status == "completed":
            return 1.0
        return self.steps_completed / self.steps_total if self.steps_total > 0 else 0.0

    def update(self, job: dict[str, Any]) -> None:
        self.status = str(job.get("status", self.status))
        self.activity = str(job.get("activity") or "")
        self.steps_completed = int(job.get("steps_completed") or 0)
        self.steps_total = int(job.get("steps_total") or 0)
        self.error = ""


@dataclass
class FarmState:
    mode: str = ""                    # "peer" or "manager"
    base_url: str = ""                # where the add-on talks to right now
    version: dict[str, Any] = field(default_factory=dict)
    job_types: list[dict[str, Any]] = field(default_factory=list)
    job_types_url: str = ""           # the farm the cached job types came from
    status: dict[str, Any] | None = None   # the peer's farm status
    manager_status: str = ""
    error: str = ""                   # the last failure talking to the farm
    peer_note: str = ""               # starting / started by this Blender / reused
    job: JobProgress | None = None
    cache_path: Path | None = None

    def job_type(self, name: str) -> dict[str, Any] | None:
        return next((t for t in self.job_types if t.get("name") == name), None)

    def load_cache(self, path: Path) -> None:
        self.cache_path = path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and isinstance(data.get("job_types"), list):
            self.job_types = [t for t in data["job_types"] if isinstance(t, dict) and "name" in t]
            self.job_types_url = str(data.get("url", ""))

    def save_cache(self) -> None:
        if self.cache_path is None:
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"url": self.job_types_url, "job_types": self.job_types}), encoding="utf-8")
            os.replace(tmp, self.cache_path)
        except OSError:
            pass  # a cache: the next refresh asks the farm again


farm = FarmState()
