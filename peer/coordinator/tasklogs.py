"""Task logs as plain text files, one per task.

Layout follows Flamenco Manager's: ``logs/job-<first 4 of job id>/<job id>/task-<task id>.txt``,
so a person can find and read them without any tool. The ``task_logs`` table
in the store indexes them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class TaskLogs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: set[Path] = set()  # folders known to exist: one mkdir per job, not per line

    def job_dir(self, job_id: str) -> Path:
        return self.root / f"job-{job_id[:4]}" / job_id

    def path_for(self, task_id: str, job_id: str) -> Path:
        return self.job_dir(job_id) / f"task-{task_id}.txt"

    def append(self, path: Path, text: str) -> None:
        if path.parent not in self._made:
            os.makedirs(path.parent, exist_ok=True)
            self._made.add(path.parent)
        with open(path, "a", encoding="utf-8", errors="replace") as f:
            f.write(text)

    def tail(self, path: Path, max_bytes: int = 2048) -> str:
        if not path.exists():
            return ""
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - max_bytes))
            data = f.read()
        return data.decode("utf-8", errors="replace")

    def size(self, path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    def delete_job(self, job_id: str) -> None:
        self._made.discard(self.job_dir(job_id))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
