"""``flamenco-peer``: run a peer, submit jobs, watch and steer them."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .clientlib import ClientError, FlamencoClient
from .config import ConfigError, default_data_dir, load_config

DEFAULT_URL = "http://127.0.0.1:8780"


def _local_peer_url() -> str:
    env = os.environ.get("FLAMENCO_PEER_URL")
    if env:
        return env
    try:
        info = json.loads((default_data_dir() / "peer.json").read_text())
        return info["url"]
    except (OSError, ValueError, KeyError):
        return DEFAULT_URL


# --- run ---------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    try:
        config = load_config(data_dir)
    except ConfigError as exc:
        print(f"flamenco-peer: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"flamenco-peer: cannot use {data_dir} as the data dir ({exc.strerror or exc}); "
              "pass --data-dir with a folder this user can write", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {
        "port": args.port, "name": args.name, "host": args.host, "blender": args.blender,
        "ffmpeg": args.ffmpeg,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if args.no_worker:
        config.worker = False
    if args.enable_exec:
        config.enable_exec = True
    if args.worker_timeout is not None:
        config.worker_timeout_s = args.worker_timeout
    if args.worker_mode is not None:
        config.worker_mode = args.worker_mode
    join = args.join
    if args.join_code:
        from .cluster import identity as farm_identity

        try:
            joined = farm_identity.join(data_dir, args.join_code)
        except farm_identity.IdentityError as exc:
            print(f"flamenco-peer: {exc}", file=sys.stderr)
            return 2
        if joined.changed:
            print(f"flamenco-peer: this peer now belongs to farm {joined.identity.name!r}"
                  + (f" (the previous farm file is kept as {joined.backup})" if joined.backup else ""), flush=True)
        join = join or joined.seed
    if join and "://" not in join:
        join = f"http://{join}"

    from .node import NodeOptions, PeerNode  # heavy imports only for `run`

    from .cluster.identity import IdentityError

    node = PeerNode(NodeOptions(data_dir=data_dir, config=config, join_url=join, worker=config.worker))
    try:
        asyncio.run(node.run_forever())
    except KeyboardInterrupt:
        pass
    except IdentityError as exc:
        print(f"flamenco-peer: {exc}", file=sys.stderr)
        return 2
    return 0


# --- farm ----------------------------------------------------------------------


def cmd_farm_join_code(args: argparse.Namespace) -> int:
    from .cluster import identity as farm_identity

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    try:
        identity = farm_identity.load_or_create(data_dir)
        code = identity.join_code(seed=args.seed)
    except (farm_identity.IdentityError, ValueError) as exc:
        print(f"flamenco-peer: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print(code)
        return 0
    print(f"Join code of farm {identity.name!r} (id {identity.farm_id}):\n\n    {code}\n")
    print("On another computer, run:  flamenco-peer run --join-code " + code)
    print("Keep it private: anyone with this code can submit jobs to the farm and run its tasks.")
    if not args.seed:
        print("Tip: add --seed HOST:PORT of this peer if the network blocks multicast (mDNS).")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = FlamencoClient(args.peer)
    status = client.farm_status()
    workers: list[dict[str, Any]] = []
    try:
        workers = client.workers()
    except ClientError:
        pass  # no coordinator right now: still show the peers
    if args.json:
        print(json.dumps({**status, "workers": workers}, indent=2))
        return 0
    me = status["self"]
    coord = status["coordinator"]
    if coord.get("url"):
        print(f"Farm coordinator: {coord.get('peer_id', '')[:8]} at {coord['url']} (epoch {coord.get('epoch')})")
    else:
        print(f"Farm coordinator: none right now — {me.get('waiting_reason') or 'electing'}")
    rows = []
    why: list[str] = []
    for peer in [dict(me, alive=True, last_heard_s=0.0), *status["peers"]]:
        worker = peer.get("worker") or {}
        doing = "-"
        if worker:
            # Older peers send no "state": only the task, or nothing.
            doing = (f"task {worker['current_task'][:8]}" if worker.get("current_task")
                     else "idle" if worker.get("state", "idle: no task") == "idle: no task" else worker["state"])
            if worker.get("state") and peer.get("alive"):
                line = f"  {peer.get('name', '')}: {worker['state']}"
                if worker.get("reason") and worker["reason"] not in worker["state"]:
                    line += f" ({worker['reason']})"
                if worker.get("buffered_updates"):
                    line += f"; {worker['buffered_updates']} task updates wait for delivery"
                why.append(line)
                if worker.get("availability"):
                    why.append(f"      {worker['availability']}")
        state = peer.get("role", "") if peer.get("alive") else f"gone ({peer.get('last_heard_s', 0):.0f} s)"
        rows.append([
            peer.get("name", ""), peer.get("peer_id", "")[:8], state, str(peer.get("epoch", "")),
            str(peer.get("applied", "")), doing, peer.get("url", ""),
        ])
    print(_table(rows, ["PEER", "ID", "ROLE", "EPOCH", "LOG", "WORKING ON", "URL"]))
    if why:
        print("\nWorkers, and why they work or not:")
        print("\n".join(why))
    if workers:
        print()
        print(_table([[w["name"], w["status"], (w.get("task") or {}).get("name", "-")] for w in workers],
                     ["WORKER", "STATUS", "TASK"]))
    return 0


# --- submit ------------------------------------------------------------------


def prepare_job(
    client: FlamencoClient, job_type_name: str, *, sets: list[str], blend: str | None, name: str | None,
    priority: int = 50, paused: bool = False, blender: str = "blender", verbose: bool = True,
) -> dict[str, Any]:
    """Build a Flamenco ``SubmittedJob`` the way the add-on would."""
    from .settings_eval import SettingsError, evaluate_in_blender, needs_blender, parse_assignments, with_defaults

    job_type = client.job_type(job_type_name)
    try:
        given = parse_assignments(sets, job_type)
    except SettingsError as exc:
        raise ClientError(str(exc)) from None
    name = name or (Path(blend).stem if blend else job_type_name)
    keys = {s["key"] for s in job_type.get("settings", [])}
    blend_path = Path(blend).resolve() if blend else None
    if blend_path is not None:
        if not blend_path.is_file():
            raise ClientError(f"--blend {blend}: no such file")
        if "blendfile" in keys and "blendfile" not in given:
            given["blendfile"] = str(blend_path)
    values = with_defaults(job_type, given)
    if needs_blender(job_type, given):
        if blend_path is None:
            missing = [s["key"] for s in job_type["settings"] if s.get("eval") and s["key"] not in given]
            if any(s.get("required") for s in job_type["settings"] if s["key"] in missing):
                raise ClientError(
                    f"job type {job_type_name!r} computes {', '.join(missing)} from a .blend file; "
                    "pass --blend FILE (Blender evaluates them) or give each with --set key=value"
                )
        else:
            if verbose:
                print(f"Evaluating job settings in Blender from {blend_path.name} ...", file=sys.stderr)
            try:
                values = evaluate_in_blender(blender, blend_path, job_type, name, values, set(given))
            except SettingsError as exc:
                raise ClientError(str(exc)) from None
    return {
        "name": name, "type": job_type_name, "priority": priority,
        "submitter_platform": platform.system().lower(), "type_etag": job_type.get("etag", ""),
        "settings": values, "metadata": {"user.name": os.environ.get("USER", "")},
        "initial_status": "paused" if paused else "queued",
    }


def cmd_submit(args: argparse.Namespace) -> int:
    client = FlamencoClient(args.peer)
    job = prepare_job(
        client, args.job_type, sets=args.set or [], blend=args.blend, name=args.name,
        priority=args.priority, paused=args.paused, blender=args.blender, verbose=not args.json,
    )
    submitted = client.submit(job)
    if args.json and not args.wait:
        print(json.dumps(submitted, indent=2))
        return 0
    if not args.json:
        print(f"Submitted job {submitted['id']} ({submitted['name']!r}, {submitted['steps_total']} steps)")
    if not args.wait:
        return 0
    final = wait_for_job(client, submitted["id"], quiet=args.json)
    if args.json:
        print(json.dumps(final, indent=2))
    return 0 if final["status"] == "completed" else 1


FINAL_STATUSES = {"completed", "failed", "canceled", "paused"}


def wait_for_job(client: FlamencoClient, job_id: str, *, quiet: bool = False, interval: float = 0.3) -> dict[str, Any]:
    """Poll until the job ends, drawing a progress bar on stderr."""
    bar = ProgressBar(sys.stderr, enabled=not quiet)
    while True:
        job = client.job(job_id)
        tasks = client.tasks(job_id)
        bar.draw(job, tasks)
        if job["status"] in FINAL_STATUSES:
            bar.finish(job, tasks)
            return job
        time.sleep(interval)


class ProgressBar:
    def __init__(self, stream: Any, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last_line = ""
        self.started = time.monotonic()

    def line(self, job: dict[str, Any], tasks: list[dict[str, Any]]) -> str:
        total = job["steps_total"] or 1
        done = min(job["steps_completed"], total)
        width = 30
        filled = int(width * done / total)
        finished = sum(1 for t in tasks if t["status"] == "completed")
        running = sum(1 for t in tasks if t["status"] == "active")
        elapsed = time.monotonic() - self.started
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {100 * done // total:3d}%  "
            f"{done}/{job['steps_total']} steps  tasks {finished}/{len(tasks)} done, {running} running  "
            f"{job['status']}  {elapsed:5.1f}s"
        )

    def draw(self, job: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        text = self.line(job, tasks)
        if self.tty:
            self.stream.write("\r" + text.ljust(len(self.last_line)))
            self.stream.flush()
        elif text.split("  ")[:3] != self.last_line.split("  ")[:3]:
            self.stream.write(text + "\n")
            self.stream.flush()
        self.last_line = text

    def finish(self, job: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\n")
        self.stream.write(f"Job {job['name']!r} {job['status']}" + (f": {job['activity']}" if job["activity"] else "") + "\n")
        for t in tasks:
            if t["status"] in ("failed", "soft-failed"):
                self.stream.write(f"  task {t['name']} ({t['id']}) {t['status']}; see `flamenco-peer log {t['id']}`\n")
        self.stream.flush()


# --- listing and actions -----------------------------------------------------


def _require_ref(ref: str, what: str) -> str:
    ref = ref.strip()
    if not ref:
        # An empty prefix would match everything: refuse rather than act on a random job.
        raise ClientError(f"give a {what} id (or a unique prefix of one); an empty id matches nothing")
    return ref


def _resolve_job(client: FlamencoClient, ref: str) -> str:
    ref = _require_ref(ref, "job")
    if len(ref) == 36:
        return ref
    matches = [j["id"] for j in client.jobs() if j["id"].startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ClientError(f"no job id starts with {ref!r}; see `flamenco-peer jobs`")
    raise ClientError(f"{ref!r} matches {len(matches)} jobs; give more characters of the id")


def _resolve_task(client: FlamencoClient, ref: str) -> str:
    ref = _require_ref(ref, "task")
    if len(ref) == 36:
        return ref
    matches = [t["id"] for j in client.jobs() for t in client.tasks(j["id"]) if t["id"].startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ClientError(f"no task id starts with {ref!r}; see `flamenco-peer tasks JOB`")
    raise ClientError(f"{ref!r} matches {len(matches)} tasks; give more characters of the id")


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = FlamencoClient(args.peer).jobs()
    if args.json:
        print(json.dumps(jobs, indent=2))
    elif not jobs:
        print("No jobs. Submit one with `flamenco-peer submit JOBTYPE ...`.")
    else:
        print(_table(
            [[j["id"][:8], j["name"], j["type"], j["status"], str(j["priority"]),
              f"{j['steps_completed']}/{j['steps_total']}"] for j in jobs],
            ["ID", "NAME", "TYPE", "STATUS", "PRIO", "STEPS"],
        ))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    client = FlamencoClient(args.peer)
    tasks = client.tasks(_resolve_job(client, args.job))
    if args.json:
        print(json.dumps(tasks, indent=2))
    else:
        print(_table(
            [[t["id"][:8], t["name"], t["task_type"], t["status"], f"{t['steps_completed']}/{t['steps_total']}",
              (t.get("worker") or {}).get("name", "")] for t in tasks],
            ["ID", "NAME", "TYPE", "STATUS", "STEPS", "WORKER"],
        ))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    client = FlamencoClient(args.peer)
    task_id = _resolve_task(client, args.task)
    text = client.task_log(task_id)
    if args.json:
        print(json.dumps({"task_id": task_id, "log": text}))
    else:
        sys.stdout.write(text or "(the task has no log yet)\n")
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    workers = FlamencoClient(args.peer).workers()
    if args.json:
        print(json.dumps(workers, indent=2))
    else:
        print(_table([[w["id"][:8], w["name"], _worker_status(w), w.get("last_seen", "")] for w in workers],
                     ["ID", "NAME", "STATUS", "LAST SEEN"]))
    return 0


def _worker_status(worker: dict[str, Any]) -> str:
    change = worker.get("status_change")
    if not change:
        return worker["status"]
    when = " after its task" if change.get("is_lazy") else ""
    return f"{worker['status']} -> {change['status']}{when}"


def _resolve_worker(client: FlamencoClient, ref: str) -> dict[str, Any]:
    ref = _require_ref(ref, "worker")
    workers = client.workers()
    exact = [w for w in workers if ref in (w["id"], w["name"])]
    matches = exact or [w for w in workers if w["id"].startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ClientError(f"no worker is named {ref!r} or has an id starting with it; see `flamenco-peer workers`")
    raise ClientError(f"{ref!r} matches {len(matches)} workers; give its id (see `flamenco-peer workers`)")


def cmd_worker_status(args: argparse.Namespace) -> int:
    client = FlamencoClient(args.peer)
    worker = _resolve_worker(client, args.worker)
    status = "asleep" if args.command == "sleep" else "awake"
    lazy = bool(getattr(args, "after_task", False))
    client.set_worker_status(worker["id"], status, is_lazy=lazy)
    if status == "awake":
        print(f"Worker {worker['name']} is asked to wake up; it takes tasks again within seconds")
    elif lazy:
        print(f"Worker {worker['name']} goes to sleep after its current task; wake it with "
              f"`flamenco-peer wake {worker['name']}`")
    else:
        print(f"Worker {worker['name']} goes to sleep now (its task goes back to the queue); wake it with "
              f"`flamenco-peer wake {worker['name']}`")
    return 0


def _setting_row(setting: dict[str, Any]) -> list[str]:
    kind = setting["type"] + (f"/{setting['subtype']}" if setting.get("subtype") else "")
    value = [f"default {json.dumps(setting['default'], ensure_ascii=False)}"] if "default" in setting else []
    if setting.get("eval"):
        value.append(f"eval {setting['eval']}")
    return [setting["key"], kind, "yes" if setting.get("required") else "",
            ", ".join(str(c) for c in setting.get("choices") or []), "; ".join(value)]


def _describe_job_type(job_type: dict[str, Any]) -> str:
    head = f"{job_type['name']}  {job_type['label']}".rstrip()
    if job_type.get("description"):
        head += f" — {job_type['description']}"
    rows = [_setting_row(s) for s in job_type.get("settings") or []]
    if not rows:
        return head + "\n  (no settings)"
    headers = ["SETTING", "TYPE", "REQUIRED", "CHOICES", "DEFAULT / EVAL"]
    # A column no setting uses is only noise.
    keep = [i for i in range(len(headers)) if i < 2 or any(r[i] for r in rows)]
    table = _table([[r[i] for i in keep] for r in rows], [headers[i] for i in keep])
    return head + "\n" + "\n".join("  " + line for line in table.splitlines())


def cmd_job_types(args: argparse.Namespace) -> int:
    client = FlamencoClient(args.peer)
    types = client.job_types()
    broken = client.job_type_errors()
    if args.json:
        print(json.dumps(types, indent=2))
    elif not types:
        print("No job types. Put job-type scripts (.js) in the peer's job_types folder.")
    else:
        print("\n\n".join(_describe_job_type(t) for t in types))
    if broken:
        print("\nJob-type scripts that failed to load:", file=sys.stderr)
        for error in broken:
            print(f"  {error['message']}", file=sys.stderr)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from .compile_cmd import CompileOptions, compile_locally, format_outcome, outcome_json

    outcome = compile_locally(CompileOptions(
        job_type=args.job_type, data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(),
        job_types_dir=Path(args.job_types_dir) if args.job_types_dir else None, sets=tuple(args.set or ()),
        settings_json=args.settings_json, blend=args.blend, name=args.name, priority=args.priority,
        blender=args.blender,
    ))
    print(json.dumps(outcome_json(outcome), indent=2) if args.json else format_outcome(outcome))
    return 0


_ACTIONS = {
    "cancel": ("cancel-requested", "canceled from the command line"),
    "pause": ("pause-requested", "paused from the command line"),
    "requeue": ("requeueing", "requeued from the command line"),
}


def cmd_action(args: argparse.Namespace) -> int:
    client = FlamencoClient(args.peer)
    job_id = _resolve_job(client, args.job)
    if args.command == "delete":
        client.delete_job(job_id)
        print(f"Deleted job {job_id}")
    elif args.command == "priority":
        client.set_job_priority(job_id, args.priority)
        print(f"Job {job_id} priority is now {args.priority}")
    else:
        status, reason = _ACTIONS[args.command]
        client.set_job_status(job_id, status, reason)
        job = client.job(job_id)
        print(f"Job {job_id} is now {job['status']}")
    return 0


def cmd_blocklist(args: argparse.Namespace) -> int:
    client = FlamencoClient(args.peer)
    job_id = _resolve_job(client, args.job)
    entries = client.job_blocklist(job_id)
    if args.clear:
        chosen = [e for e in entries
                  if (not args.worker or args.worker in (e["worker_id"], e.get("worker_name")))
                  and (not args.task_type or e["task_type"] == args.task_type)]
        if not chosen:
            print(f"Nothing to clear: job {job_id} has no matching blocklist entries")
            return 0
        client.clear_blocklist(job_id, [{"worker_id": e["worker_id"], "task_type": e["task_type"]} for e in chosen])
        print(f"Cleared {len(chosen)} blocklist entr{'y' if len(chosen) == 1 else 'ies'} of job {job_id}; "
              "those workers may take its tasks again")
        return 0
    if args.json:
        print(json.dumps(entries, indent=2))
    elif not entries:
        print(f"Job {job_id} has no blocklisted workers")
    else:
        print(_table([[e.get("worker_name", ""), e["worker_id"][:8], e["task_type"]] for e in entries],
                     ["WORKER", "ID", "TASK TYPE"]))
        print("\nA worker is blocklisted after failing too many tasks of one type in a job. "
              "Clear with: flamenco-peer blocklist JOB --clear [--worker W] [--task-type T]")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


# --- parser ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flamenco-peer",
        description="A peer-to-peer render farm for Blender, compatible with Flamenco 3. "
                    "Start a peer with `flamenco-peer run`; alone it is a whole farm.",
    )
    parser.add_argument("--version", action="version", version=f"flamenco-peer {__version__}")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_parser(name: str, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--peer", default=_local_peer_url(), metavar="URL",
                       help="the peer (or Flamenco Manager) to talk to (default: the local peer, %(default)s)")
        if json_flag:
            p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return p

    run = sub.add_parser("run", help="run a peer (coordinator + worker when alone)",
                         description="Run a peer. It finds the other peers of its farm, and the farm elects one "
                                     "coordinator; alone, a peer coordinates and works by itself.")
    run.add_argument("--data-dir", metavar="DIR", help=f"where jobs, logs and config live (default: {default_data_dir()})")
    run.add_argument("--port", type=int, help="HTTP port (default 8780 or the config; 0 = any free port)")
    run.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--name", help="this peer's name (default: the host name)")
    run.add_argument("--join", metavar="HOST:PORT",
                     help="contact this peer of the farm first (for networks where mDNS finds no one)")
    run.add_argument("--join-code", metavar="CODE",
                     help="join the farm of this code (from `flamenco-peer farm join-code` on one of its peers)")
    run.add_argument("--no-worker", action="store_true", help="do not run tasks on this machine")
    run.add_argument("--blender", metavar="PATH", help="Blender executable for {blender} (default: blender on PATH)")
    run.add_argument("--ffmpeg", metavar="PATH", help="FFmpeg executable (default: ffmpeg on PATH)")
    run.add_argument("--enable-exec", action="store_true", help="allow the `exec` command (runs any program a job names)")
    run.add_argument("--worker-timeout", type=float, metavar="SECONDS",
                     help="requeue a worker's tasks when it is silent this long (default 60)")
    run.add_argument("--worker-mode", choices=["always", "when-idle", "never"],
                     help="when this computer takes tasks: always (default), when-idle (only while nobody uses "
                          "keyboard and mouse; see idle_threshold_s in the config) or never")
    run.set_defaults(func=cmd_run)

    submit = client_parser("submit", "submit a job")
    submit.add_argument("job_type", metavar="JOBTYPE", help="job type name, see `flamenco-peer job-types`")
    submit.add_argument("--set", action="append", metavar="KEY=VALUE", help="a job setting (repeatable)")
    submit.add_argument("--blend", metavar="FILE", help="the .blend file; Blender computes the settings that have an eval expression")
    submit.add_argument("--name", help="job name (default: the .blend file's name or the job type)")
    submit.add_argument("--priority", type=int, default=50, help="0-100, higher runs first (default 50)")
    submit.add_argument("--paused", action="store_true", help="submit paused; start it with `requeue`")
    submit.add_argument("--wait", action="store_true", help="wait for the job to finish, with a progress bar")
    submit.add_argument("--blender", default=shutil.which("blender") or "blender", help="Blender used to evaluate settings")
    submit.set_defaults(func=cmd_submit)

    client_parser("status", "show the farm: peers, their roles, the coordinator and the work").set_defaults(
        func=cmd_status)
    farm = sub.add_parser("farm", help="farm identity: the join code",
                          description="Show this peer's farm identity.")
    farm_sub = farm.add_subparsers(dest="farm_command", required=True, metavar="SUBCOMMAND")
    jc = farm_sub.add_parser("join-code", help="print the code another computer uses to join this farm",
                             description="Print the join code of this peer's farm (created on first use).")
    jc.add_argument("--data-dir", metavar="DIR", help=f"the peer's data dir (default: {default_data_dir()})")
    jc.add_argument("--seed", metavar="HOST:PORT", help="a reachable address of this peer, put into the code")
    jc.add_argument("--quiet", "-q", action="store_true", help="print only the code")
    jc.set_defaults(func=cmd_farm_join_code)

    client_parser("jobs", "list jobs").set_defaults(func=cmd_jobs)
    p = client_parser("tasks", "list a job's tasks")
    p.add_argument("job", metavar="JOB", help="job id (a unique prefix is enough)")
    p.set_defaults(func=cmd_tasks)
    p = client_parser("log", "print a task's log")
    p.add_argument("task", metavar="TASK", help="task id (a unique prefix is enough)")
    p.set_defaults(func=cmd_log)
    client_parser("workers", "list workers").set_defaults(func=cmd_workers)
    p = client_parser("sleep", "send a worker to sleep: it takes no tasks until woken (also after a restart)",
                      json_flag=False)
    p.add_argument("worker", metavar="WORKER", help="worker name or id (a unique id prefix is enough)")
    p.add_argument("--after-task", action="store_true",
                   help="let it finish the task it runs first (default: requeue that task now)")
    p.set_defaults(func=cmd_worker_status)
    p = client_parser("wake", "wake a worker that was sent to sleep", json_flag=False)
    p.add_argument("worker", metavar="WORKER", help="worker name or id (a unique id prefix is enough)")
    p.set_defaults(func=cmd_worker_status)
    client_parser("job-types", "list job types and their settings").set_defaults(func=cmd_job_types)

    comp = sub.add_parser(
        "compile", help="show the tasks a job would get, without submitting it (no peer needed)",
        description="Run a job type's script on the given settings, as a peer does on submission, and print the "
                    "tasks it makes. Nothing is submitted and no peer needs to run. Job types come from the "
                    "built-ins, the data dir's job_types folder, then --job-types-dir (a later one overrides).",
    )
    comp.add_argument("job_type", metavar="JOBTYPE", help="job type name, see `flamenco-peer job-types`")
    comp.add_argument("--job-types-dir", metavar="DIR", help="a folder of job-type scripts that override all others")
    comp.add_argument("--data-dir", metavar="DIR",
                      help=f"the peer data dir whose job_types folder and config to use (default: {default_data_dir()})")
    comp.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="a job setting, converted to the setting's type (repeatable; wins over --settings-json)")
    comp.add_argument("--settings-json", metavar="FILE", help="a JSON object of job settings (- reads standard input)")
    comp.add_argument("--blend", metavar="FILE",
                      help="the .blend file; Blender computes the settings that have an eval expression")
    comp.add_argument("--blender", default=shutil.which("blender") or "blender", help="Blender used to evaluate settings")
    comp.add_argument("--name", help="job name (default: the .blend file's name or the job type)")
    comp.add_argument("--priority", type=int, default=50, choices=range(0, 101), metavar="PRIORITY",
                      help="0-100 (default 50)")
    comp.add_argument("--json", action="store_true", help="print the compiled job as JSON")
    comp.set_defaults(func=cmd_compile)
    for action, help in (("cancel", "cancel a job"), ("pause", "pause a job (running tasks finish)"),
                         ("requeue", "requeue (resume) a job: failed, canceled and paused tasks run again"),
                         ("delete", "delete a job, its tasks and logs")):
        p = client_parser(action, help, json_flag=False)
        p.add_argument("job", metavar="JOB", help="job id (a unique prefix is enough)")
        p.set_defaults(func=cmd_action)
    p = client_parser("blocklist", "show or clear the workers blocklisted for a job's task types")
    p.add_argument("job", metavar="JOB", help="job id (a unique prefix is enough)")
    p.add_argument("--clear", action="store_true", help="remove entries (all, or those matching --worker/--task-type)")
    p.add_argument("--worker", metavar="NAME_OR_ID", help="with --clear: only this worker's entries")
    p.add_argument("--task-type", metavar="TYPE", help="with --clear: only entries of this task type")
    p.set_defaults(func=cmd_blocklist)
    p = client_parser("priority", "change a job's priority", json_flag=False)
    p.add_argument("job", metavar="JOB")
    p.add_argument("priority", type=int, choices=range(0, 101), metavar="PRIORITY", help="0-100")
    p.set_defaults(func=cmd_action)

    demo = sub.add_parser("demo", help="render a tiny scene on a local farm of three peers",
                          description="Start a coordinator and two workers on loopback, render a generated scene "
                                      "with simple-blender-render, print where the frames and video are, stop the farm.")
    demo.add_argument("--output", default="demo-output", help="folder for the farm's data and the renders (default: %(default)s)")
    demo.add_argument("--frames", default="1-12", help="frame range (default: %(default)s)")
    demo.add_argument("--chunk-size", type=int, default=3, help="frames per task (default: %(default)s)")
    demo.add_argument("--blender", default=shutil.which("blender") or "blender")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ClientError as exc:
        print(f"flamenco-peer: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
