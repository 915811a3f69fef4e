"""Job types shared with the whole farm.

Every peer publishes the scripts of its own job-type folder
(``<data dir>/job_types``) to the coordinator, which records them in the
replicated log (``JobTypePublished`` / ``JobTypeWithdrawn``). Every replica
therefore holds every shared script, and whichever peer coordinates compiles
with the same set. When two peers share a script of the same name, the most
recently published one wins, so an edit on any peer takes effect farm-wide and
the job type's etag follows it.

A publication is declarative: a peer always sends its whole folder, and what
it no longer has is withdrawn. Sending the same folder twice changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from ..compiler.loader import SharedScript, job_type_name
from . import events as ev
from .store import Transaction

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_SCRIPTS_PER_PEER = 200
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}\.js$")


class PublicationError(ValueError):
    pass


def check_publication(scripts: Any) -> dict[str, str]:
    """``{file_name: source}`` from the wire, or PublicationError saying what is wrong."""
    if not isinstance(scripts, dict):
        raise PublicationError("'scripts' must be a map of file name to script source")
    if len(scripts) > MAX_SCRIPTS_PER_PEER:
        raise PublicationError(
            f"{len(scripts)} job-type scripts is more than the {MAX_SCRIPTS_PER_PEER} a peer may share; "
            "move unused scripts out of the job_types folder")
    names: dict[str, str] = {}
    for file_name, source in scripts.items():
        if not isinstance(file_name, str) or not _FILE_NAME.match(file_name):
            raise PublicationError(
                f"job-type file name {file_name!r} is not allowed: use letters, digits, '-', '_' and '.', "
                "ending in .js, with no folders")
        if not isinstance(source, str):
            raise PublicationError(f"{file_name}: the script must be text")
        if len(source.encode("utf-8")) > MAX_SCRIPT_BYTES:
            raise PublicationError(f"{file_name}: larger than {MAX_SCRIPT_BYTES // 1024} KiB; job-type scripts are small")
        name = job_type_name(file_name)
        if name in names:
            raise PublicationError(f"{file_name} and {names[name]} both define job type {name!r}; keep one")
        names[name] = file_name
    return dict(scripts)


def publish(tx: Transaction, publisher_id: str, publisher_name: str, scripts: dict[str, str], at: str) -> dict[str, int]:
    """Record one peer's folder; returns how many job types changed."""
    existing = {
        r["name"]: (r["file_name"], r["source"])
        for r in tx.query("SELECT name, file_name, source FROM shared_job_types WHERE publisher_id=?", (publisher_id,))
    }
    wanted = {job_type_name(f): (f, src) for f, src in scripts.items()}
    published = withdrawn = 0
    for name, (file_name, source) in sorted(wanted.items()):
        if existing.get(name) != (file_name, source):
            tx.emit(ev.JobTypePublished(
                name=name, file_name=file_name, source=source,
                publisher_id=publisher_id, publisher_name=publisher_name, at=at))
            published += 1
    for name in sorted(set(existing) - set(wanted)):
        tx.emit(ev.JobTypeWithdrawn(name=name, publisher_id=publisher_id, at=at))
        withdrawn += 1
    return {"published": published, "withdrawn": withdrawn}


def shared_scripts(tx: Transaction) -> list[SharedScript]:
    """Every shared script, oldest publication first (so later ones override)."""
    return [
        SharedScript(file_name=r["file_name"], source=r["source"], origin=f"farm:{r['publisher_name']}")
        for r in tx.query("SELECT file_name, source, publisher_name FROM shared_job_types ORDER BY at, publisher_id")
    ]
