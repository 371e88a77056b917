"""Run recipes as Ray Jobs on a Ray cluster, and manage those jobs.

    hyflow submit [--address URL] [--wait] [--name NAME] [--python PATH] CONFIG [key.path=value ...]
    hyflow jobs list | status ID | logs ID [--follow] | stop ID      [--address URL]

`submit` validates the recipe here first (a bad key is refused before anything is uploaded), then
uploads the project folder (minus `.venv`, `runs/`, `.git` and caches) as the job's working
directory and runs `python -m orchestrator.cli train CONFIG [overrides] ray.address=auto` there,
with the cluster's Python: `--python`, by default this interpreter, which is right when the client
and the cluster share the environment (one machine, or a venv on a shared filesystem). Nothing is
pip-installed inside the job. It prints the job id on stdout; `--wait` then streams the job's logs
and exits 0 only if the job SUCCEEDED.

The cluster address is the Ray dashboard's HTTP address (the Jobs API): `--address`, else
`RAY_API_SERVER_ADDRESS`, else `RAY_ADDRESS` when it is an http(s) URL, else http://127.0.0.1:8265.
Exit codes: 0 ok, 1 the job did not succeed or the cluster could not be reached, 2 bad usage or config.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Not uploaded (gitignore syntax, relative to the project folder). Directory patterns carry no
# trailing slash so Ray skips the directory itself instead of walking into it (.venv is GBs).
EXCLUDES = [".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", "build"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobsError(Exception):
    """A one-line error for the user (exit code 1)."""


class UsageError(JobsError):
    """Bad arguments (exit code 2)."""


# ------------------------------------------------------------------------------ the cluster address
def resolve_address(arg: str | None) -> str:
    """The Jobs API URL to use: --address, RAY_API_SERVER_ADDRESS, an http(s) RAY_ADDRESS, the default."""
    if arg:
        if not arg.startswith(("http://", "https://")):
            raise UsageError(f"--address {arg}: {_not_http(arg)}")
        return arg.rstrip("/")
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var, "").strip()
        if not value:
            continue
        if value.startswith(("http://", "https://")):
            return value.rstrip("/")
        print(f"hyflow: ignoring {var}={value}: {_not_http(value)}; using {DEFAULT_ADDRESS}", file=sys.stderr)
    return DEFAULT_ADDRESS


def _not_http(value: str) -> str:
    if value == "auto":
        hint = "'auto' finds a local Ray instance for ray.init(), not its dashboard"
    elif value.startswith("ray://"):
        hint = "that is a Ray Client address (ray start's --ray-client-server-port, 10001)"
    else:
        hint = "that looks like a GCS address (ray start's --port, 6379)"
    return (f"{hint}; Ray Jobs talk to the head's dashboard over HTTP: give its URL, "
            f"e.g. http://HEAD_IP:8265 (ray start --head --dashboard-port)")


@contextmanager
def _client(address: str):
    """A JobSubmissionClient for `address`; turns connection and HTTP failures into JobsError."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient
    _quiet_ray_logs()
    try:
        # Ray lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override an explicit address: hide them while
        # the client is built, so the address resolved above is the one used.
        saved = {v: os.environ.pop(v) for v in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if v in os.environ}
        try:
            client = JobSubmissionClient(address)
        finally:
            os.environ.update(saved)
        yield client
    except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise JobsError(f"cannot reach the Ray dashboard at {address} ({type(e).__name__}); start a head with "
                        f"`ray start --head --dashboard-host 127.0.0.1` or pass --address http://HEAD_IP:8265") from None
    except AuthenticationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "authentication failed"
        raise JobsError(f"{address}: {first} (the cluster uses token auth, and hyflow sets RAY_AUTH_MODE=disabled "
                        "unless it is set: run with RAY_AUTH_MODE=token; Ray reads the token from RAY_AUTH_TOKEN, "
                        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)") from None
    except RuntimeError as e:  # the SDK's "Request failed with status code N: body"
        text = " ".join(str(e).split())
        if "status code 404" in text and "does not exist" in text:
            raise JobsError(f"{address}: {text.split(': ', 1)[-1].rstrip('.')}") from None
        raise JobsError(f"{address}: {text}") from None


def _quiet_ray_logs() -> None:
    """Drop Ray's INFO lines on each ignore file read, each upload and each log stream closed, and
    its notice that .git / .venv are now excluded by default (hyflow excludes them anyway). Called
    after `import ray`, which sets these loggers' levels."""
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    working_dir = logging.getLogger("ray._private.runtime_env.working_dir")
    if not any(isinstance(f, _DefaultExcludeNotice) for f in working_dir.filters):
        working_dir.addFilter(_DefaultExcludeNotice())


class _DefaultExcludeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is now ignored by default when packaging" not in record.getMessage()


def _add_address(parser: argparse.ArgumentParser, default=None) -> None:
    parser.add_argument("--address", default=default, metavar="URL",
                        help=f"Ray dashboard URL (default: $RAY_API_SERVER_ADDRESS, an http(s) $RAY_ADDRESS, "
                             f"else {DEFAULT_ADDRESS})")


def _run(prog: str, fn, args) -> int:
    try:
        return fn(args)
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except JobsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------------------ submit
def _uploaded(path: Path) -> bool:
    """Whether `path` (absolute) lies in the project folder and is not excluded from the upload
    (EXCLUDES and the project's top-level .gitignore / .rayignore, as Ray applies them)."""
    from ray._private.thirdparty.pathspec import PathSpec
    try:
        rel = path.relative_to(REPO_ROOT)
    except ValueError:
        return False
    lines = list(EXCLUDES)
    if not os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE"):
        lines += _read_lines(REPO_ROOT / ".gitignore")
    lines += _read_lines(REPO_ROOT / ".rayignore")
    spec = PathSpec.from_lines("gitwildmatch", lines)
    parts = rel.parts
    return not any(spec.match_file("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def _read_lines(p: Path) -> list[str]:
    return p.read_text(encoding="utf-8").splitlines() if p.is_file() else []


def build_entrypoint(config: str, overrides: list[str], python: str) -> tuple[str, str | None]:
    """The job's shell command and, when the recipe is not uploaded with the project, a note why
    it is read from its absolute path instead."""
    cfg = Path(config).resolve()
    if _uploaded(cfg):
        arg, note = cfg.relative_to(REPO_ROOT).as_posix(), None
    else:
        arg = str(cfg)
        note = (f"{config} is not uploaded with the project ({REPO_ROOT}): the job reads it at {cfg} on the "
                f"cluster, so it must be there (shared storage); or copy it under {REPO_ROOT / 'configs'}")
    argv = [python, "-m", "orchestrator.cli", "train", arg, *overrides, "ray.address=auto"]
    return shlex.join(argv), note


def submit_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hyflow submit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a recipe as a Ray Job on a running Ray cluster, e.g.\n"
                    "  hyflow submit --wait configs/quickstart.yaml trainer.output_dir=/shared/runs/qs\n"
                    "The recipe is validated here first; the project folder is uploaded as the job's working\n"
                    "directory and the job runs `python -m orchestrator.cli train CONFIG ... ray.address=auto`.\n"
                    "Give trainer.output_dir as an absolute path on storage that every node sees: a relative\n"
                    "one lands in the job's working directory, a copy that Ray manages and deletes.")
    _add_address(parser)
    parser.add_argument("--wait", action="store_true", help="stream the job's logs; exit 0 only if it SUCCEEDED")
    parser.add_argument("--name", help="a label stored with the job (default: trainer.experiment_name)")
    parser.add_argument("--python", default=sys.executable,
                        help="the Python that runs the job on the cluster (default: this interpreter, %(default)s: "
                             "right when client and cluster share the environment, e.g. one machine or a "
                             "venv on a shared filesystem; else the path of the cluster's venv python)")
    parser.add_argument("config", help="YAML recipe (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    args = parser.parse_intermixed_args(argv)
    return _run("hyflow submit", _submit, args)


def _submit(args) -> int:
    from orchestrator.config import ConfigError, load_config
    from orchestrator.recipes import resolve_recipe
    overrides = list(args.overrides)
    try:  # with the overrides the job gets: a key the job would refuse is refused here, before the upload
        config = resolve_recipe(args.config)  # a file, or a packaged recipe's name
        cfg = load_config(config, [*overrides, "ray.address=auto"])
    except (ConfigError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    address = resolve_address(args.address)
    entrypoint, note = build_entrypoint(config, overrides, args.python)
    if note:
        print(f"hyflow submit: note: {note}", file=sys.stderr)
    out = cfg.trainer.output_dir
    if not os.path.isabs(out):
        print(f"hyflow submit: note: trainer.output_dir={out} is relative: it resolves in the job's working "
              "directory, a copy of the project that Ray unpacks under its temp dir on the head and deletes "
              "later; pass an absolute path on shared storage to keep the run", file=sys.stderr)
    name = args.name or cfg.trainer.experiment_name
    metadata = {"name": str(name), "config": str(args.config), "output_dir": str(out)}
    runtime_env = {"working_dir": str(REPO_ROOT), "excludes": list(EXCLUDES)}
    with _client(address) as client:
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata)
        print(job_id, flush=True)
        if not args.wait:
            print(f"hyflow submit: job {job_id} submitted to {address}; follow it with `hyflow jobs logs {job_id} "
                  f"--follow`, stop it with `hyflow jobs stop {job_id}`", file=sys.stderr)
            return 0
        return _follow(client, job_id)


# ------------------------------------------------------------------------------ following a job
def _follow(client, job_id: str) -> int:
    """Stream the job's logs to stdout until it ends; 0 if it SUCCEEDED, else 1 (Ctrl-C: 130)."""
    import aiohttp
    shown = [0]  # characters of the log written so far
    try:
        try:
            asyncio.run(_tail(client, job_id, shown))
        except (RuntimeError, aiohttp.ClientError) as e:  # the stream broke: poll the full log from there
            print(f"hyflow: log stream interrupted ({type(e).__name__}: {e}); polling", file=sys.stderr)
            _poll_logs(client, job_id, shown[0])
        status, message = _final_status(client, job_id)
    except KeyboardInterrupt:
        print(f"\nhyflow: stopped following; job {job_id} keeps running (hyflow jobs stop {job_id})", file=sys.stderr)
        return 130
    if status == "SUCCEEDED":
        print(f"hyflow: job {job_id} SUCCEEDED", file=sys.stderr)
        return 0
    print(f"hyflow: job {job_id} ended {status}" + (f": {message}" if message else ""), file=sys.stderr)
    return 1


async def _tail(client, job_id: str, shown: list[int]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()
        shown[0] += len(chunk)


def _poll_logs(client, job_id: str, shown: int = 0, every_s: float = 2.0) -> None:
    while True:
        done = str(client.get_job_status(job_id)) in TERMINAL
        logs = client.get_job_logs(job_id)
        sys.stdout.write(logs[shown:])
        sys.stdout.flush()
        shown = len(logs)
        if done:
            return
        time.sleep(every_s)


def _final_status(client, job_id: str, timeout_s: float = 30.0) -> tuple[str, str]:
    """The job's status once terminal (the log stream can close a moment before the status is set)."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        if str(info.status) in TERMINAL or time.monotonic() > deadline:
            return str(info.status), _short(info.message)
        time.sleep(0.5)


# ------------------------------------------------------------------------------ hyflow jobs ...
def jobs_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hyflow jobs", description="Ray Jobs on the cluster: list them, "
                                     "show one's status or logs, stop one.")
    _add_address(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,status,logs,stop}")
    p = sub.add_parser("list", help="every job: id, status, name, start time")
    _add_address(p, argparse.SUPPRESS)
    p = sub.add_parser("status", help="a job's status, message, entrypoint and run dir")
    p.add_argument("id", help="submission id (as printed by hyflow submit)")
    _add_address(p, argparse.SUPPRESS)
    p = sub.add_parser("logs", help="a job's logs")
    p.add_argument("id")
    p.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends; "
                   "exit 0 only if it SUCCEEDED")
    _add_address(p, argparse.SUPPRESS)
    p = sub.add_parser("stop", help="stop a job (SIGTERM, then SIGKILL) and wait until it has ended")
    p.add_argument("id")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the end (default %(default)s)")
    _add_address(p, argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return _run(f"hyflow jobs {args.command}", _jobs, args)


def _jobs(args) -> int:
    address = resolve_address(args.address)
    with _client(address) as client:
        if args.command == "list":
            _print_list(client.list_jobs())
            return 0
        if args.command == "status":
            _print_status(client.get_job_info(args.id))
            return 0
        if args.command == "logs":
            if args.follow:
                return _follow(client, args.id)
            sys.stdout.write(client.get_job_logs(args.id))
            return 0
        return _stop(client, args.id, args.timeout)


def _stop(client, job_id: str, timeout_s: float) -> int:
    status = str(client.get_job_status(job_id))
    if status in TERMINAL:
        print(f"{job_id}: already ended {status}")
        return 0
    client.stop_job(job_id)
    deadline = time.monotonic() + timeout_s
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(client.get_job_status(job_id))
    if status not in TERMINAL:
        raise JobsError(f"job {job_id} is still {status} {timeout_s:g} s after the stop request")
    print(f"{job_id}: {status}")
    return 0


def _short(message: str | None) -> str:
    """A job message's first part: a failed job's message goes on with the end of its log."""
    lines = (message or "").strip().splitlines()
    return lines[0].split(", last available logs")[0] if lines else ""


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _print_list(jobs) -> None:
    rows = [(j.submission_id or j.job_id or "-", str(j.status), (j.metadata or {}).get("name", "-"),
             _when(j.start_time)) for j in sorted(jobs, key=lambda j: j.start_time or 0)]
    header = ("ID", "STATUS", "NAME", "STARTED")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _print_status(info) -> None:
    meta = info.metadata or {}
    lines = [("id", info.submission_id or info.job_id), ("status", str(info.status)),
             ("message", _short(info.message)), ("name", meta.get("name")),
             ("started", _when(info.start_time)), ("ended", _when(info.end_time) if info.end_time else None),
             ("entrypoint", info.entrypoint), ("run dir", meta.get("output_dir"))]
    for key, value in lines:
        if value:
            print(f"{key + ':':<12}{value}")
