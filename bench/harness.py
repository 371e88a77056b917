"""What the same-run benchmarks share: one child process per side, results as JSON files.

A benchmark script calls `args = parse(doc, "steps", 3, runners)`: in a child (hidden --only SIDE
--out DIR) that runs runners[SIDE](count, DIR, overrides) under the CLI's process settings, writes
DIR/SIDE.json and exits; in the parent it returns the parsed arguments, and `spawn` starts a child.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def parse(doc: str, count_flag: str, default: int, runners: dict[str, Callable[[int, Path, list[str]], dict]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument(f"--{count_flag}", type=int, default=default, dest="count")
    ap.add_argument("--only", choices=sorted(runners), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--sides", default=",".join(runners), help="which sides to run, comma-separated")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override for the hyflow side (repeatable), e.g. actor.world_size=1")
    a = ap.parse_args()
    a.count_flag = count_flag
    if a.only:
        from orchestrator.cli import _ENV  # the CLI's process settings (before torch / ray / vllm)
        for k, v in _ENV.items():
            os.environ.setdefault(k, v)
        result = runners[a.only](a.count, a.out, a.set)
        (a.out / f"{a.only}.json").write_text(json.dumps(result))
        sys.exit(0)
    return a


def spawn(script: str, side: str, a: argparse.Namespace, out: Path) -> subprocess.Popen:
    sets = [x for kv in a.set for x in ("--set", kv)]
    return subprocess.Popen([sys.executable, script, "--only", side, f"--{a.count_flag}", str(a.count),
                             "--out", str(out), *sets], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def result(side: str, out: Path) -> dict:
    return json.loads((out / f"{side}.json").read_text())
