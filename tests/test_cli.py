"""The command line as a user meets it (real subprocesses; nothing here starts Ray)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hyflow(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_version_and_help():
    from importlib.metadata import version
    out = hyflow("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"hyflow {version('hyflow')}"
    out = hyflow("--help")
    assert out.returncode == 0 and "hyflow submit" in out.stdout and "hyflow view" in out.stdout


def test_unknown_command_is_named():
    out = hyflow("trian", "configs/quickstart.yaml")
    assert out.returncode == 2
    assert "unknown command 'trian'; commands: train, eval, submit, jobs, view, train-rm" in out.stderr


def test_train_without_a_recipe_says_what_it_needs():
    out = hyflow("train")
    assert out.returncode == 2 and "needs a recipe, e.g. `hyflow train configs/quickstart.yaml`" in out.stderr
    assert "packaged recipes: " in out.stderr and "quickstart" in out.stderr


def test_packaged_recipe_by_name_from_anywhere(tmp_path):
    from orchestrator.recipes import resolve_recipe
    assert Path(resolve_recipe("quickstart")).read_text() == (REPO / "configs/quickstart.yaml").read_text()
    # A bad key in a packaged recipe run is refused before anything starts, from any directory.
    out = hyflow("train", "quickstart", "trainer.total_stepz=1", cwd=tmp_path)
    assert out.returncode == 2 and "unknown key 'trainer.total_stepz' (did you mean 'trainer.total_steps'?)" in out.stderr
    out = hyflow("train", "nosuchrecipe", cwd=tmp_path)
    assert out.returncode == 2 and "config file not found: nosuchrecipe (packaged recipes: for_blocksworld" in out.stderr


def test_log_level_is_checked():
    out = hyflow("--log-level", "LOUD", "train", "quickstart")
    assert out.returncode == 2 and "--log-level takes DEBUG, INFO, WARNING or ERROR" in out.stderr


def test_benchmarks_commands_name_files_in_the_repository():
    """Every `python bench/...` or `configs/...` path in BENCHMARKS.md exists in the repository."""
    import re
    text = (REPO / "BENCHMARKS.md").read_text()
    paths = set(re.findall(r"\b((?:bench|configs|scripts)/[\w./-]+\.(?:py|sh|yaml))", text))
    assert paths, "no commands found in BENCHMARKS.md"
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing
    scripts = re.findall(r"`[^`]*\s(/tmp/[\w./-]+\.(?:py|sh))", text)
    assert not scripts, f"commands run scripts outside the repository: {scripts}"


def test_missing_files_fail_in_seconds_naming_their_keys(tmp_path):
    import time
    t0 = time.monotonic()
    out = hyflow("train", "quickstart", "data.train_path=/missing.jsonl", "model.path=/models/missing",
                 f"trainer.output_dir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr
    assert "data.train_path: no such file or folder: /missing.jsonl" in out.stderr
    assert "model.path: no such model folder: /models/missing" in out.stderr
    assert "Traceback" not in out.stderr and time.monotonic() - t0 < 60
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_a_used_output_dir_is_refused_before_ray(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    out = hyflow("train", "quickstart", f"trainer.output_dir={tmp_path / 'run'}")
    assert out.returncode == 2 and "trainer.resume=true" in out.stderr and "Traceback" not in out.stderr
    assert "Started a local Ray instance" not in out.stderr
