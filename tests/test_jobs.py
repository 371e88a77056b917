"""`hyflow submit` / `hyflow jobs` against a real Ray head that this module starts on loopback.

    .venv/bin/python -m pytest tests/test_jobs.py -q        # ~4-5 min on 2 busy cores

The head gets its own free ports and its own --temp-dir, so it never meets the session's local
cluster or anyone else's Ray; it is torn down by process group (and any process left under its
temp dir), never with `ray stop`, which would stop every Ray on the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import shlex
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
HEAD_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _pids_under(tmp: str) -> list[int]:
    """Processes of this head: its temp dir in their command line or as (part of) their cwd
    (the job drivers and actors run in the working dir unpacked under it)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{d}/cwd")
        except OSError:
            continue
        if tmp in cmd or cwd.startswith(tmp):
            pids.append(int(d))
    return pids


@pytest.fixture(scope="module")
def head():
    """A Ray head with the dashboard (Jobs API) on 127.0.0.1 free ports; yields .url and .tmp (its temp dir)."""
    tmp = tempfile.mkdtemp(prefix="hyjobs-", dir="/tmp")  # short: Ray's unix sockets live under it
    gcs, dash, client, agent, agent_grpc, nm, om, metrics, renv = free_ports(9)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(HEAD_ENV)
    log = open(Path(tmp) / "head.log", "w")
    cmd = [str(Path(PY).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={renv}", "--num-cpus=2",
           f"--object-store-memory={256 * 1024**2}", f"--temp-dir={tmp}", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"ray start exited {proc.returncode}:\n{(Path(tmp) / 'head.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the head's dashboard did not come up in 120 s"
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(1)
        yield SimpleNamespace(url=url, tmp=Path(tmp))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # ray start --block and the head processes it spawned
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=3)  # ray start --block outlives SIGTERM: give its children a moment
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        time.sleep(2)
        for pid in _pids_under(tmp):  # job drivers run in their own sessions; workers may linger
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def hyflow(*args: str, timeout: float = 120, **env_vars: str) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, from the repo root, without any RAY_ADDRESS of the caller."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(env_vars)
    return subprocess.run([PY, "-m", "orchestrator.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tiny_run(model: str, out: Path, steps: int = 1) -> list[str]:
    """configs/grpo_math.yaml shrunk to seconds per step on the tiny model (as test_recipes.shrink)."""
    return ["configs/grpo_math.yaml", f"model.path={model}", f"trainer.total_steps={steps}",
            "rollout.max_new_tokens=8", "data.val_size=0", "rollout.kv_cache_gb=0.25", "trainer.progress=false",
            "weight_sync.bucket_mb=4", "actor.micro_batch_size=2", "data.batch_size=2", "rollout.n=2",
            f"trainer.output_dir={out}"]


def job_ids(url: str) -> list[str]:
    r = hyflow("jobs", "list", "--address", url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and lines[0].split()[:2] == ["ID", "STATUS"], r.stdout
    return [line.split()[0] for line in lines[1:]]


def test_submit_wait_runs_a_step_and_reports_failure(head, tiny_model_dir, tmp_path):
    url, run = head.url, tmp_path / "run"
    # Ray's own upload filters (.gitignore, its default excludes) off: only hyflow's EXCLUDES decide.
    r = hyflow("submit", "--address", url, "--wait", "--name", "tiny-one-step", *tiny_run(tiny_model_dir, run),
               timeout=600, RAY_RUNTIME_ENV_IGNORE_GITIGNORE="1", RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES="")
    assert r.returncode == 0, f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    job = r.stdout.splitlines()[0]
    assert f"job {job} SUCCEEDED" in r.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(row["step"] for row in rows) == 1, rows
    step = [row for row in rows if row["step"] == 1][0]
    assert "reward/mean" in step and step["sync/verified"] is True, step
    assert (run / "checkpoints/step_1/hf/config.json").is_file()
    assert "done:" in r.stdout  # the run's own last line, streamed from the job's log

    status = hyflow("jobs", "status", job, "--address", url)
    assert status.returncode == 0, status.stderr
    fields = dict(line.split(":", 1) for line in status.stdout.splitlines())
    assert fields["status"].strip() == "SUCCEEDED" and fields["name"].strip() == "tiny-one-step"
    assert fields["run dir"].strip() == str(run)
    assert "-m orchestrator.cli train configs/grpo_math.yaml" in fields["entrypoint"]
    assert fields["entrypoint"].strip().endswith("ray.address=auto")
    assert job in job_ids(url)

    # What was uploaded: the project without the venv, VCS, caches and run outputs (__pycache__ is
    # not checked: the job's own imports write one).
    found = sorted(head.tmp.glob("session_latest/runtime_resources/working_dir_files/*"))
    pkgs = [p for p in found if p.is_dir() and (p / "orchestrator").is_dir()]
    assert len(pkgs) == 1, found
    pkg = pkgs[0]
    assert (pkg / "orchestrator/jobs.py").read_text() == (REPO / "orchestrator/jobs.py").read_text()
    assert (pkg / "configs/grpo_math.yaml").is_file()
    for gone in (".venv", ".git", ".pytest_cache", ".hypothesis", "hyflow.egg-info"):
        assert not (pkg / gone).exists(), gone
    assert not list(pkg.rglob("runs")), list(pkg.rglob("runs"))  # runs/, bench_results/*/runs/

    # The same run dir again: the job refuses the non-empty output_dir and --wait says it FAILED.
    again = hyflow("submit", "--address", url, "--wait", *tiny_run(tiny_model_dir, run), timeout=300)
    assert again.returncode == 1, again.stderr[-3000:]
    failed = again.stdout.splitlines()[0]
    assert f"job {failed} ended FAILED" in again.stderr
    assert "trainer.output_dir" in again.stdout and "is not empty" in again.stdout  # the job's own error


def test_stop_ends_a_running_job_and_its_workers(head, tiny_model_dir, tmp_path):
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors
    url = head.url

    r = hyflow("submit", "--address", url, *tiny_run(tiny_model_dir, tmp_path / "long", steps=200))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    client = JobSubmissionClient(url)
    deadline = time.monotonic() + 240
    while True:  # until the run's workers are up: a real run is being stopped, not a starting process
        info = client.get_job_info(job)
        assert str(info.status) in ("PENDING", "RUNNING"), (info.status, info.message, client.get_job_logs(job)[-3000:])
        alive = list_actors(address=url, filters=[("job_id", "=", info.job_id), ("state", "=", "ALIVE")],
                            raise_on_missing_output=False) if info.job_id else []
        if str(info.status) == "RUNNING" and alive:
            break
        assert time.monotonic() < deadline, f"job not running with workers after 240 s: {info.status}"
        time.sleep(2)

    stop = hyflow("jobs", "stop", job, "--address", url)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip() == f"{job}: STOPPED"
    status = hyflow("jobs", "status", job, "--address", url)
    assert "status:     STOPPED" in status.stdout, status.stdout
    deadline = time.monotonic() + 60
    while list_actors(address=url, filters=[("job_id", "=", info.job_id), ("state", "=", "ALIVE")],
                      raise_on_missing_output=False):
        assert time.monotonic() < deadline, "the stopped job's actors are still alive after 60 s"
        time.sleep(2)
    again = hyflow("jobs", "stop", job, "--address", url)
    assert (again.returncode, again.stdout.strip()) == (0, f"{job}: already ended STOPPED")


def test_bad_config_is_refused_before_submitting(head, tmp_path):
    url = head.url
    before = job_ids(url)
    r = hyflow("submit", "--address", url, "configs/grpo_math.yaml", "trainer.totl_steps=1",
               f"trainer.output_dir={tmp_path / 'never'}")
    assert r.returncode == 2
    assert r.stdout == ""  # no job id
    assert "hyflow submit: unknown key 'trainer.totl_steps'" in r.stderr and "Traceback" not in r.stderr
    assert job_ids(url) == before
    missing = hyflow("jobs", "status", "raysubmit_nosuchjob", "--address", url)
    assert missing.returncode == 1 and "raysubmit_nosuchjob" in missing.stderr and "Traceback" not in missing.stderr


def test_address_errors_are_one_line():
    (closed,) = free_ports(1)
    r = hyflow("jobs", "list", "--address", f"http://127.0.0.1:{closed}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"hyflow jobs list: cannot reach the Ray dashboard at http://127.0.0.1:{closed} "
                                "(ConnectionError); start a head with `ray start --head --dashboard-host 127.0.0.1` "
                                "or pass --address http://HEAD_IP:8265")
    r = hyflow("submit", "--address", "127.0.0.1:6379", "configs/quickstart.yaml")
    assert r.returncode == 2 and "looks like a GCS address" in r.stderr and "http://HEAD_IP:8265" in r.stderr


def test_entrypoint_quotes_overrides_and_locates_the_recipe(tmp_path):
    from orchestrator.jobs import REPO_ROOT, build_entrypoint
    overrides = ["data.train_path=/data/my file.jsonl", "trainer.experiment_name=it's; rm -rf x"]
    cmd, note = build_entrypoint(str(REPO / "configs" / "grpo_math.yaml"), overrides, "/opt/py env/bin/python")
    assert note is None  # uploaded with the project: named relative to the job's working dir
    assert shlex.split(cmd) == ["/opt/py env/bin/python", "-m", "orchestrator.cli", "train", "configs/grpo_math.yaml",
                                *overrides, "ray.address=auto"]
    outside = tmp_path / "my recipe.yaml"  # not uploaded: read from its absolute path, with a note saying so
    cmd, note = build_entrypoint(str(outside), [], "python")
    assert shlex.split(cmd)[4] == str(outside) and "is not uploaded with the project" in note
    cmd, note = build_entrypoint(str(REPO_ROOT / "runs" / "x" / "config.yaml"), [], "python")  # excluded dir
    assert shlex.split(cmd)[4] == str(REPO_ROOT / "runs" / "x" / "config.yaml") and note
