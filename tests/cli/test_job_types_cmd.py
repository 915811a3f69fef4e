"""``flamenco-peer job-types``: every job type of a real peer, with its settings."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from peer.clientlib import FlamencoClient
from peer.localfarm import LocalFarm

from .conftest import Cli, assert_clean_error

SHOWCASE_JS = """\
const JOB_TYPE = {
  label: "Showcase",
  description: "Every kind of setting",
  settings: [
    { key: "shot", type: "string", required: true },
    { key: "quality", type: "string", choices: ["low", "high"], default: "low" },
    { key: "out_dir", type: "string", subtype: "dir_path", default: "/tmp/out" },
    { key: "scale", type: "float", default: 1.5 },
    { key: "draft", type: "bool", default: false },
    { key: "camera", type: "string", required: true, eval: "C.scene.camera.name" },
  ],
};
function compileJob(job) {}
"""

BARE_JS = "const JOB_TYPE = {label: 'Bare'};\nfunction compileJob(job) {}\n"


@pytest.fixture(scope="module")
def farm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A peer whose job_types folder holds our scripts, one of them broken."""
    root = tmp_path_factory.mktemp("farm")
    job_types = root / "typed" / "job_types"
    job_types.mkdir(parents=True)
    (job_types / "showcase.js").write_text(SHOWCASE_JS)
    (job_types / "bare.js").write_text(BARE_JS)
    (job_types / "broken.js").write_text("const JOB_TYPE = {label: 'Broken'\n")
    farm = LocalFarm(root)
    try:
        yield farm.start_peer("typed", worker=False).url
    finally:
        farm.stop()


@pytest.fixture(scope="module")
def cli(farm_url: str, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(tmp_path_factory.mktemp("cli"), farm_url)


def block_of(text: str, name: str) -> list[str]:
    """The lines describing one job type (blocks are separated by a blank line)."""
    blocks = [b.splitlines() for b in text.split("\n\n")]
    found = [b for b in blocks if b[0].split()[0] == name]
    assert len(found) == 1, text
    return found[0]


def test_settings_are_shown_with_type_required_choices_and_default_or_eval(cli: Cli) -> None:
    r = cli.ok("job-types")
    block = block_of(r.stdout, "showcase")
    assert block[0] == "showcase  Showcase — Every kind of setting"
    assert block[1].split() == ["SETTING", "TYPE", "REQUIRED", "CHOICES", "DEFAULT", "/", "EVAL"]
    assert all(line.startswith("  ") for line in block[1:]), block
    # Columns line up: each field starts where its header does.
    header = block[1]
    columns = {h: header.index(h) for h in ("TYPE", "REQUIRED", "CHOICES", "DEFAULT / EVAL")}
    lines = {line.split()[0]: line for line in block[2:]}
    assert set(lines) == {"shot", "quality", "out_dir", "scale", "draft", "camera"}, block

    def cell(key: str, column: str) -> str:
        names = list(columns)
        start = columns[column]
        nxt = names.index(column) + 1
        end = columns[names[nxt]] if nxt < len(names) else None
        return lines[key][start:end].strip()

    assert (cell("shot", "TYPE"), cell("shot", "REQUIRED"), cell("shot", "DEFAULT / EVAL")) == ("string", "yes", "")
    assert (cell("quality", "CHOICES"), cell("quality", "DEFAULT / EVAL")) == ("low, high", 'default "low"')
    assert (cell("out_dir", "TYPE"), cell("out_dir", "DEFAULT / EVAL")) == ("string/dir_path", 'default "/tmp/out"')
    assert (cell("scale", "TYPE"), cell("scale", "DEFAULT / EVAL")) == ("float", "default 1.5")
    assert (cell("draft", "TYPE"), cell("draft", "REQUIRED"), cell("draft", "DEFAULT / EVAL")) == (
        "bool", "", "default false")
    assert (cell("camera", "REQUIRED"), cell("camera", "DEFAULT / EVAL")) == ("yes", "eval C.scene.camera.name")


def test_unused_columns_are_left_out_and_builtins_are_listed(cli: Cli) -> None:
    r = cli.ok("job-types")
    echo = block_of(r.stdout, "echo-sleep-test")
    assert echo[0] == "echo-sleep-test  Echo Sleep Test"
    assert echo[1].split() == ["SETTING", "TYPE", "REQUIRED", "DEFAULT", "/", "EVAL"]  # no choices
    assert [line.split() for line in echo[2:]] == [
        ["message", "string", "yes"],
        ["sleep_duration_seconds", "int32", "default", "1"],
        ["sleep_repeats", "int32", "default", "1"],
    ]
    render = block_of(r.stdout, "simple-blender-render")
    frames = next(line for line in render if line.split()[0] == "frames")
    assert frames.split()[1:3] == ["string", "yes"]
    assert frames.endswith("eval f'{C.scene.frame_start}-{C.scene.frame_end}'"), frames
    assert block_of(r.stdout, "bare") == ["bare  Bare", "  (no settings)"]


def test_json_is_the_apis_job_types(cli: Cli, farm_url: str) -> None:
    listed = cli.ok("job-types", "--json").json()
    assert listed == FlamencoClient(farm_url).job_types()
    showcase = next(t for t in listed if t["name"] == "showcase")
    assert showcase["settings"][1] == {"key": "quality", "type": "string", "choices": ["low", "high"],
                                       "default": "low"}


def test_a_broken_script_does_not_break_the_listing(cli: Cli) -> None:
    # The Flamenco API lists loaded job types only; the broken one is left out.
    names = [t["name"] for t in cli.ok("job-types", "--json").json()]
    assert "broken" not in names and "showcase" in names
    r = cli.ok("job-types")
    assert all(block.splitlines()[0].split()[0] != "broken" for block in r.stdout.split("\n\n")), r.stdout
    # ...and said to be broken, with the file and the cause, on stderr.
    assert "failed to load" in r.stderr and "broken.js" in r.stderr, r.explain()


def test_unreachable_peer(bare_cli: Cli) -> None:
    r = bare_cli("job-types", peer="http://127.0.0.1:9")
    assert_clean_error(r)
    assert "cannot reach a peer at http://127.0.0.1:9" in r.stderr, r.explain()


def test_help(bare_cli: Cli) -> None:
    r = bare_cli.ok("job-types", "--help", use_peer=False)
    assert r.stdout.startswith("usage: flamenco-peer job-types"), r.explain()
    assert "settings" in r.stdout and "--json" in r.stdout and "--peer" in r.stdout, r.explain()


def test_empty_farm_says_where_job_types_go(tmp_path: Path) -> None:
    # A stand-in peer that answers the job-types request with an empty list.
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = json.dumps({"job_types": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        r = Cli(tmp_path / "cli").ok("job-types", peer=f"http://127.0.0.1:{server.server_port}")
        assert r.stdout == "No job types. Put job-type scripts (.js) in the peer's job_types folder.\n", r.explain()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
