"""No shared folder, on a real network: the artist's peer and the workers are
separate hosts (one network namespace and one IP each, on a bridge, found by
mDNS) with nothing on disk in common.

Each peer runs in its own namespace (``tests/netns.py``) and also in its own
mount namespace, where the other peers' folders are covered by an empty
read-only tmpfs: a worker cannot read the artist's project or write into the
artist's output folder even by accident (a path left unrewritten fails the
task instead of silently working, as it would on one shared disk). The artist
submits with the CLI from inside its namespace, over that namespace's
loopback, as on a workstation; the test reads the farm from the host's address
on the bridge with requests signed for the farm.

- A .blend linking a library, with an image texture inside the project and one
  outside it, made at test time, renders on a worker that had none of the
  files; the frames and the preview video arrive in the artist's output folder
  with the right pixels.
- The artist's peer, which also coordinates the farm, is cut off (its link to
  the bridge goes down) once the workers have fetched the files: the workers
  elect a coordinator and finish the job, the outputs wait in their outboxes,
  and when the link comes back everything is delivered.

While the owner is away, the preview video is made from the frames both
workers kept (workers serve their own outputs of a job); a finished task is
held up by the cut-off owner or coordinator only for seconds; and once the
link is back, the workers deliver at once (a returning peer wakes their
outboxes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from peer.cluster import identity as farm_identity
from peer.cluster.auth import sign_headers
from peer.cluster.identity import FarmIdentity
from peer.clientlib import ClientError, FlamencoClient, _decode
from tests.files.project import GREEN, RED, make_project, region_colour
from tests.netns import NetnsLab, requires_netns
from tests.polling import eventually
from tests.scenes import requires_blender, requires_ffmpeg

PORT = 8780
REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("completed", "failed", "canceled")

requires_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None,
    reason="hiding one host's folders from another needs util-linux's `unshare` (apt install util-linux)",
)

# Runs argv with each folder before "--" covered by an empty read-only tmpfs, in a
# private mount namespace: what another computer would see of those folders.
_HIDE_AND_EXEC = (
    'while [ "$1" != "--" ]; do mount -t tmpfs -o ro,size=16k,mode=0555 other-host "$1" || exit 97; shift; done; '
    'shift; exec "$@"'
)


def hidden_from(folders: list[Path], argv: list[str]) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _HIDE_AND_EXEC, "sh",
            *map(str, folders), "--", *argv]


class FarmClient(FlamencoClient):
    """The stdlib Flamenco client, every request signed for the farm: the host is not on a peer's loopback."""

    def __init__(self, base_url: str, identity: FarmIdentity, timeout: float = 10.0) -> None:
        super().__init__(base_url, timeout)
        self.identity = identity

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = self.base_url.rstrip("/") + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for name, value in sign_headers(self.identity, "test-harness", method, path, data or b"").items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _decode(resp.read(), resp.headers.get_content_type())
        except urllib.error.HTTPError as exc:
            payload = _decode(exc.read(), exc.headers.get_content_type() if exc.headers else "")
            message = payload.get("message") if isinstance(payload, dict) else None
            raise ClientError(message or f"HTTP {exc.code} from {url}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


@dataclass
class Host:
    """One computer of the farm: a namespace, its own folder, and the peer running there."""

    index: int
    name: str
    root: Path  # everything of this computer; the other peers cannot see it
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    url: str = ""

    @property
    def data_dir(self) -> Path:
        return self.root / "peer-data"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


class NetworkFarm:
    """Peers on separate hosts of a lab, each host's folder invisible to the others."""

    def __init__(self, lab: NetnsLab, root: Path, names: list[str]) -> None:
        self.lab = lab
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.hosts = [Host(i, name, root / name) for i, name in enumerate(names)]
        for host in self.hosts:
            host.data_dir.mkdir(parents=True)
        # The farm exists before its first peer starts, so the others can join by code alone (mDNS finds them).
        self.identity = farm_identity.load_or_create(self.hosts[0].data_dir)

    def others(self, host: Host) -> list[Path]:
        return [h.root for h in self.hosts if h is not host]

    def launch(self, host: Host, *, worker: bool) -> None:
        """Start the peer of ``host``; ``wait_started`` waits for it."""
        argv = [sys.executable, "-m", "peer", "--log-level", "info", "run", "--host", "0.0.0.0",
                "--port", str(PORT), "--data-dir", str(host.data_dir), "--name", host.name]
        if host.index:
            argv += ["--join-code", self.identity.join_code()]
        if not worker:
            argv.append("--no-worker")
        host.log_path = self.logs / f"{host.name}.log"
        with open(host.log_path, "ab") as log_file:
            host.process = self.lab.popen(host.index, hidden_from(self.others(host), argv), stdout=log_file,
                                          stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        host.url = f"http://{self.lab.ips[host.index]}:{PORT}"

    def wait_started(self, *hosts: Host) -> None:
        for host in hosts:
            eventually(lambda: self._started(host), 20, f"{host.name} started")

    def _started(self, host: Host) -> bool:
        assert host.process is not None
        if host.process.poll() is not None:
            raise AssertionError(f"{host.name} exited ({host.process.returncode}):\n{host.log()[-3000:]}")
        return (host.data_dir / "peer.json").exists()

    def client(self, host: Host) -> FarmClient:
        return FarmClient(host.url, self.identity)

    def sees(self, host: Host, path: Path) -> bool:
        """Whether a program on ``host`` finds ``path`` (with the other hosts' folders out of its sight)."""
        r = self.lab.run(host.index, hidden_from(self.others(host), ["test", "-e", str(path)]), timeout=10)
        assert r.returncode in (0, 1), f"cannot look from {host.name} (exit {r.returncode})"
        return r.returncode == 0

    def cli(self, host: Host, *args: str) -> str:
        """``flamenco-peer ARGS`` on ``host``, talking to its own peer over loopback; its standard output."""
        argv = [sys.executable, "-m", "peer", *args, "--peer", f"http://127.0.0.1:{PORT}"]
        r = self.lab.run(host.index, hidden_from(self.others(host), argv), capture_output=True, text=True,
                         cwd=REPO, timeout=90)
        assert r.returncode == 0, f"`flamenco-peer {' '.join(args)}` on {host.name} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def all_logs(self) -> str:
        return "\n".join(f"--- {h.name}\n{h.log()[-4000:]}" for h in self.hosts)


@pytest.fixture
def farm_factory(tmp_path: Path) -> Iterator[Callable[[list[str]], NetworkFarm]]:
    """``make(names)``: a lab with one host per name. Everything is stopped and removed afterwards."""
    made: list[NetworkFarm] = []

    def make(names: list[str]) -> NetworkFarm:
        lab = NetnsLab(len(names))
        try:
            farm = NetworkFarm(lab, tmp_path, names)
        except BaseException:
            lab.close()
            raise
        made.append(farm)
        return farm

    try:
        yield make
    finally:
        for farm in made:
            farm.lab.close()  # stops every peer (SIGTERM, then SIGKILL) before the logs are read
    for farm in made:
        for host in farm.hosts:
            assert "Traceback" not in host.log(), f"{host.name} logged a traceback:\n{host.log()[-6000:]}"


def close_to(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


def video_frames(video: Path) -> int:
    r = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                        "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(video)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"ffprobe cannot read {video}: {r.stderr}"
    return int(r.stdout.strip())


def files_in(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.rglob(pattern) if p.is_file() and not p.name.startswith("."))


def check_frames(frames: list[Path]) -> None:
    for frame in frames:
        # The left half is the linked library's object with the project's texture,
        # the right half a local object with the texture from outside the project.
        assert close_to(region_colour(frame, left=True), GREEN), f"{frame.name}: library or its texture missing"
        assert close_to(region_colour(frame, left=False), RED), f"{frame.name}: outside texture missing"


def submit_from_artist(farm: NetworkFarm, artist: Host, blend: Path, out_root: Path, name: str, frames: str) -> str:
    out = farm.cli(artist, "submit", "simple-blender-render", "--blend", str(blend), "--name", name,
                   "--set", f"frames={frames}", "--set", "chunk_size=1",
                   "--set", f"render_output_root={out_root}", "--set", "add_path_components=0", "--json")
    return json.loads(out)["id"]


def wait_for_job_end(client: FarmClient, job_id: str, timeout: float) -> dict[str, Any]:
    return eventually(lambda: (j := client.job(job_id))["status"] in TERMINAL and j, timeout,
                      f"job {job_id} finished", interval=0.2)


def outbox_paths(host: Host) -> list[str]:
    """Where the outputs waiting in a worker's outbox go, under the owner's output root."""
    items = host.data_dir / "outbox" / "items"
    paths = []
    for record in items.glob("*/item.json") if items.is_dir() else []:
        try:
            paths.append(json.loads(record.read_text())["path"])
        except (OSError, ValueError, KeyError):
            continue  # being delivered and removed right now
    return paths


def outbox_items(host: Host) -> int:
    return len(outbox_paths(host))


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n    [measured] {line}", flush=True)


@requires_netns
@requires_unshare
@requires_blender
@requires_ffmpeg
@pytest.mark.timeout(90)
def test_a_worker_on_another_host_renders_files_it_never_had(
    farm_factory: Callable[[list[str]], NetworkFarm],
) -> None:
    farm = farm_factory(["artist", "worker"])
    artist, worker = farm.hosts
    # The artist's peer starts first, so it coordinates; the project is made meanwhile.
    farm.launch(artist, worker=False)
    project = make_project(artist.root / "project", artist.root / "elsewhere")
    out_root = artist.root / "renders"
    farm.wait_started(artist)
    farm.launch(worker, worker=True)
    farm.wait_started(worker)
    # Another computer: the worker sees none of the artist's files, the artist none of the worker's.
    assert farm.sees(artist, project.main) and not farm.sees(worker, project.main)
    assert not farm.sees(worker, artist.data_dir) and not farm.sees(artist, worker.data_dir)
    client = farm.client(artist)
    eventually(lambda: any(w["name"] == worker.name and w["status"] == "awake" for w in client.workers()), 30,
               "the worker signed on, found by mDNS", interval=0.2)

    job_id = submit_from_artist(farm, artist, project.main, out_root, "no-nas", "1-2")
    # From now on the originals are gone: only the artist peer's store has them.
    os.rename(artist.root / "project", artist.root / "project-moved-away")
    os.rename(artist.root / "elsewhere", artist.root / "elsewhere-gone")

    done = wait_for_job_end(client, job_id, 60)
    tasks = client.tasks(job_id)
    assert done["status"] == "completed", ([(t["name"], t["status"], t.get("activity")) for t in tasks],
                                           farm.all_logs())
    assert {t["worker"]["name"] for t in tasks} == {worker.name}  # the artist's peer rendered nothing

    frames = eventually(lambda: (f := files_in(out_root, "*.png")) and len(f) >= 2 and f, 30,
                        "both frames in the artist's output folder")
    assert [f.name for f in frames] == ["000001.png", "000002.png"], frames
    check_frames(frames)
    videos = eventually(lambda: files_in(out_root, "*.mp4"), 30, "the preview video in the artist's output folder")
    assert len(videos) == 1 and video_frames(videos[0]) == 2
    # The worker rendered from its own checkout into its own staging folder; the artist never checked out.
    assert (worker.data_dir / "checkouts" / job_id).is_dir()
    assert not (artist.data_dir / "checkouts" / job_id).exists()
    assert {p.name for p in files_in(worker.data_dir / "job-outputs" / job_id, "*.png")} == {f.name for f in frames}


@requires_netns
@requires_unshare
@requires_blender
@requires_ffmpeg
@pytest.mark.timeout(150)
def test_outputs_wait_while_the_artist_is_cut_off_and_arrive_when_it_is_back(
    farm_factory: Callable[[list[str]], NetworkFarm], capsys: pytest.CaptureFixture[str],
) -> None:
    farm = farm_factory(["artist", "worker-a", "worker-b"])
    artist, *workers = farm.hosts
    farm.launch(artist, worker=False)
    project = make_project(artist.root / "project", artist.root / "elsewhere")
    out_root = artist.root / "renders"
    farm.wait_started(artist)
    for host in workers:
        farm.launch(host, worker=True)
    farm.wait_started(*workers)
    artist_client = farm.client(artist)
    eventually(lambda: {h.name for h in workers} <= {w["name"] for w in artist_client.workers()
                                                     if w["status"] == "awake"},
               30, "both workers signed on, found by mDNS", interval=0.2)
    assert artist_client.farm_status()["self"]["role"] == "coordinator"  # so the cut also costs the coordinator

    job_id = submit_from_artist(farm, artist, project.main, out_root, "away", "1-4")
    os.rename(artist.root / "project", artist.root / "project-moved-away")
    os.rename(artist.root / "elsewhere", artist.root / "elsewhere-gone")

    # Once the workers have fetched the files, the artist's computer drops off the network.
    eventually(lambda: all((h.data_dir / "checkouts" / job_id).is_dir() for h in workers), 60,
               "both workers holding the job's files", interval=0.1)
    farm.lab.set_link(artist.index, False)
    cut_at = time.monotonic()
    # Normally nothing yet; a frame rendered before the second worker's fetch ended may have arrived.
    arrived_before = files_in(out_root, "*")

    worker_client = farm.client(workers[0])
    # A cut-off owner or coordinator holds no finished task up for long (connect and
    # read timeouts of seconds; thumbnails in the background): done in about 15 s.
    done = wait_for_job_end(worker_client, job_id, 40)
    finished_s = time.monotonic() - cut_at
    tasks = worker_client.tasks(job_id)
    assert done["status"] == "completed", ([(t["name"], t["status"], t.get("activity")) for t in tasks],
                                           farm.all_logs())
    assert {t["worker"]["name"] for t in tasks} <= {h.name for h in workers}
    assert files_in(out_root, "*") == arrived_before, "nothing can have reached the artist while it was cut off"
    # The rest of the four frames and the video wait in the workers' outboxes (a task
    # that was running at the cut may have run twice: the same output, queued twice).
    waiting = {path for h in workers for path in outbox_paths(h)}
    assert len(waiting) == 5 - len(arrived_before), (waiting, arrived_before)

    farm.lab.set_link(artist.index, True)
    back_at = time.monotonic()
    frames = eventually(lambda: (f := files_in(out_root, "*.png")) and len(f) >= 4 and f, 60,
                        "all four frames delivered after the artist came back", interval=0.2)
    videos = eventually(lambda: files_in(out_root, "*.mp4"), 30, "the preview video delivered")
    delivered_s = time.monotonic() - back_at
    report(capsys, f"cut off: the job completed {finished_s:.1f} s after the cut; "
                   f"its outputs were delivered {delivered_s:.1f} s after the link came back")
    assert [f.name for f in frames] == [f"{n:06d}.png" for n in range(1, 5)], frames
    check_frames(frames)
    eventually(lambda: sum(outbox_items(h) for h in workers) == 0, 30, "the workers' outboxes emptied")
    # The artist's own peer, a follower again, sees the job done.
    eventually(lambda: artist_client.job(job_id)["status"] == "completed", 30, "the artist's peer seeing the job done")
    assert len(videos) == 1
    # Made while the owner was away, from the frames both workers rendered.
    assert video_frames(videos[0]) == 4
