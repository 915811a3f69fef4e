"""Farm-wide job types: a script added on one peer is available on the whole farm."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from peer.clientlib import ClientError, FlamencoClient
from peer.localfarm import LocalFarm
from tests.polling import eventually

SCRIPT = """
const JOB_TYPE = {
    label: "Shared Echo",
    settings: [{ key: "message", type: "string", required: true, default: "%s" }],
};
function compileJob(job) {
    const task = author.Task("say", "misc");
    task.addCommand(author.Command("echo", { message: job.settings.message }));
    job.addTask(task);
}
"""


def shared_type(client: FlamencoClient) -> dict[str, Any] | None:
    return next((t for t in client.job_types() if t["name"] == "shared-echo"), None)


@pytest.mark.timeout(90)
def test_a_job_type_added_on_one_peer_reaches_the_farm_and_survives_its_coordinator(tmp_path: Path) -> None:
    with LocalFarm(tmp_path) as farm:
        farm.start(2)
        farm.wait_for_workers(2)
        coordinator, author_peer, other = farm.peers
        folder = author_peer.data_dir / "job_types"
        (folder / "shared_echo.js").write_text(SCRIPT % "first")

        # Visible through every peer: the coordinator compiles with it.
        first = eventually(lambda: shared_type(FlamencoClient(other.url)), 15, "shared job type on the farm")
        assert first["label"] == "Shared Echo"

        # An edit changes the etag farm-wide; the old etag is refused.
        (folder / "shared_echo.js").write_text(SCRIPT % "second")
        second = eventually(
            lambda: (t := shared_type(FlamencoClient(coordinator.url))) and t["etag"] != first["etag"] and t,
            15, "edited job type")
        assert second["settings"][0]["default"] == "second"
        client = FlamencoClient(other.url)
        stale = {"name": "old", "type": "shared-echo", "type_etag": first["etag"], "priority": 50,
                 "submitter_platform": "linux", "settings": {"message": "x"}}
        with pytest.raises(ClientError) as refused:
            client.submit(stale)
        assert refused.value.status == 412
        job = client.submit(dict(stale, type_etag=second["etag"], name="fresh"))
        eventually(lambda: client.job(job["id"])["status"] == "completed", 15, "job of the shared type done")

        # The coordinator dies; the next one knows the shared type from the replicated log.
        coordinator.process.send_signal(signal.SIGKILL)
        coordinator.process.wait(10)
        survivor = eventually(
            lambda: (t := shared_type(FlamencoClient(other.url))) and t["etag"] == second["etag"] and t,
            20, "shared job type after failover")
        assert survivor["name"] == "shared-echo"

        # Removing the script withdraws it from the farm.
        (folder / "shared_echo.js").unlink()
        deadline = time.monotonic() + 15
        while shared_type(FlamencoClient(other.url)) is not None:
            assert time.monotonic() < deadline, "the removed job type is still offered"
            time.sleep(0.2)


# --- the coordinator's side, on a real store -----------------------------------


def test_publication_is_declarative_and_idempotent(tmp_path: Path) -> None:
    from peer.coordinator.shared_job_types import publish, shared_scripts
    from peer.coordinator.store import JobStore

    store = JobStore(tmp_path / "peer.sqlite")
    store.open()
    try:
        def run(publisher: str, scripts: dict[str, str], at: str) -> dict[str, int]:
            with store.transaction((1, "c")) as tx:
                return publish(tx, publisher, publisher.upper(), scripts, at)

        assert run("a", {"x.js": "one", "y.js": "two"}, "t1") == {"published": 2, "withdrawn": 0}
        assert run("a", {"x.js": "one", "y.js": "two"}, "t2") == {"published": 0, "withdrawn": 0}
        assert run("b", {"x.js": "b's x"}, "t3") == {"published": 1, "withdrawn": 0}
        assert run("a", {"x.js": "one"}, "t4") == {"published": 0, "withdrawn": 1}
        # Later publications come last, so they override earlier ones of the same name.
        scripts = shared_scripts(store.read())
        assert [(s.origin, s.file_name, s.source) for s in scripts] == [
            ("farm:A", "x.js", "one"), ("farm:B", "x.js", "b's x")]
    finally:
        store.close()


@pytest.mark.parametrize("scripts, message", [
    ([], "must be a map"),
    ({"../evil.js": "x"}, "not allowed"),
    ({"sub/dir.js": "x"}, "not allowed"),
    ({"x.txt": "x"}, "not allowed"),
    ({"x.js": b"bytes"}, "must be text"),
    ({"x.js": "a" * (1024 * 1024 + 1)}, "larger than"),
    ({"my_type.js": "a", "my-type.js": "b"}, "both define job type 'my-type'"),
])
def test_bad_publications_are_refused_with_the_reason(scripts: Any, message: str) -> None:
    from peer.coordinator.shared_job_types import PublicationError, check_publication

    with pytest.raises(PublicationError, match=message):
        check_publication(scripts)
