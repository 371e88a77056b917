"""`hyflow view`: one self-contained static HTML page of a run directory.

    hyflow view runs/quickstart                       # writes runs/quickstart/view.html
    hyflow view RUN_DIR --out /tmp/run.html --steps all --max-mb 50
    python -c "from orchestrator.view import render; print(len(render('runs/quickstart')))"

The page needs no network (inline CSS and plain JS, charts drawn as inline SVG) and shows:
- the header from `config.yaml` (experiment, advantage, model, env, FoR) and any reading notes;
- the metric curves of `metrics.jsonl` (reward, response length, KL, entropy, `timing/*_s`,
  validation accuracy, agent success rates, FoR log R / accuracy) and a picker for any numeric key;
- a rollout browser over `rollouts/step_N.jsonl` and `val/step_N.jsonl` (the schema of
  orchestrator/dumps.py): step selector, min/max reward, text search, sorting;
- a group view: every row of one group side by side (samples of one prompt with their advantages,
  agent episodes turn by turn with GiGPO's repeated anchor states badged, FoR trajectories of one
  problem with their log R).
The filter state lives in the URL fragment, e.g. `view.html#src=rollouts&step=2&minReward=0.5&group=g1`
(keys: src, step, minReward, maxReward, q, sort, group, focus, metric).

Big runs: only the last `--steps` steps (default 10; "all" for every step) of each dump folder are
embedded, newest first, until the page reaches `--max-mb` (default 20); the page says what it left
out. Unreadable lines (a torn last line of a crashed run) are skipped and counted.

Safety: the data is embedded as JSON in a `<script type="application/json">` block with `<`, `>`
and `&` escaped, and rendered with textContent only; a Content-Security-Policy allows no network
and no script but the page's own (by hash), so injected markup could not run even if it appeared.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import re
import sys
from pathlib import Path

import yaml

DEFAULT_STEPS = 10
DEFAULT_MAX_MB = 20.0
MAX_METRIC_POINTS = 5000  # rows of metrics.jsonl kept for the curves (evenly thinned beyond)
TEMPLATE = Path(__file__).with_name("view_template.html")
_STEP_FILE = re.compile(r"step_(\d+)\.jsonl")
_TEXT_TURN = ("observation", "action", "response", "anchor")


class ViewError(Exception):
    """A run directory the page cannot be made from (missing folder or metrics.jsonl)."""


# ---- reading -------------------------------------------------------------------------------

def _read_jsonl(path: Path, notes: list[str], limit: int | None = None):
    """The JSON objects of a .jsonl file; lines that are not a JSON object are skipped and counted."""
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:  # splits on \n only, not on U+2028
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                yield obj
            else:
                bad += 1
    if bad:
        notes.append(f"{path.parent.name}/{path.name}: skipped {bad} unreadable line(s) (a torn last line?)")


def _num(v):
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return v
    return None


def _text(v) -> str:
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else str(v)


def _flag(v):
    return None if v is None else bool(v)


def _row(obj: dict, step: int) -> dict | None:
    """The known keys of one dump row, typed (unknown keys and kinds are dropped)."""
    kind = obj.get("kind")
    if kind == "sample":
        return {"kind": kind, "step": step, "group": _text(obj.get("group")), "prompt": _text(obj.get("prompt")),
                "response": _text(obj.get("response")), "reward": _num(obj.get("reward")),
                "advantage": _num(obj.get("advantage")), "length": _num(obj.get("length")),
                "finish_reason": _text(obj.get("finish_reason")), "data_source": _text(obj.get("data_source")),
                "ground_truth": _text(obj.get("ground_truth"))}
    if kind == "episode":
        turns = obj.get("turns") if isinstance(obj.get("turns"), list) else []
        return {"kind": kind, "step": step, "group": _text(obj.get("group")), "traj": _text(obj.get("traj")),
                "won": _flag(obj.get("won")), "return": _num(obj.get("return")),
                "task_type": _text(obj.get("task_type")), "length": _num(obj.get("length")),
                "turns": [{**{k: _text(t.get(k)) for k in _TEXT_TURN}, "env_reward": _num(t.get("env_reward")),
                           "penalty": _num(t.get("penalty")), "valid": _flag(t.get("valid")),
                           "advantage": _num(t.get("advantage"))} for t in turns if isinstance(t, dict)]}
    if kind == "trajectory":
        lst = lambda v: [_text(x) for x in v] if isinstance(v, list) else []  # noqa: E731
        return {"kind": kind, "step": step, "problem": _text(obj.get("problem")), "actions": lst(obj.get("actions")),
                "states": lst(obj.get("states")), "log_r": _num(obj.get("log_r")), "log_pf": _num(obj.get("log_pf")),
                "log_z": _num(obj.get("log_z")), "correct": _flag(obj.get("correct")),
                "replayed": _flag(obj.get("replayed"))}
    return None


def _metrics(path: Path, notes: list[str]) -> dict:
    """Column-wise numeric metrics: {"steps": [...], "series": {key: [value or null, ...]}}."""
    rows = [r for r in _read_jsonl(path, notes) if _num(r.get("step")) is not None]
    if len(rows) > MAX_METRIC_POINTS:
        stride = math.ceil(len(rows) / MAX_METRIC_POINTS)
        notes.append(f"metrics.jsonl: {len(rows)} rows, every {stride}th is drawn (and the last)")
        rows = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])
    keys = sorted({k for r in rows for k, v in r.items() if k != "step" and _num(v) is not None})
    return {"steps": [_num(r["step"]) for r in rows], "series": {k: [_num(r.get(k)) for r in rows] for k in keys}}


def _config(run: Path, notes: list[str]) -> dict:
    path = run / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        notes.append(f"config.yaml: not readable ({type(e).__name__})")
        cfg = None
    cfg = cfg if isinstance(cfg, dict) else {}

    def get(dotted):
        v = cfg
        for k in dotted.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        return v
    f = get("for_.enabled")
    return {"dir": str(run), "name": _text(get("trainer.experiment_name")),
            "advantage": _text(get("algorithm.advantage")), "model": _text(get("model.path")),
            "env": _text(get("env.name")), "for_enabled": None if f is None else bool(f)}


def _step_files(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.iterdir() if (m := _STEP_FILE.fullmatch(p.name)) and p.is_file()}


def _script_json(obj) -> str:
    """JSON safe inside a <script> block: no `<`, `>`, `&` or line separators appear literally."""
    s = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(a, b)
    return s


def _rollouts(run: Path, keep: int | None, budget: int, notes: list[str]) -> dict:
    """{"rollouts": {step: rows}, "val": {...}}: the last `keep` steps of each folder (None: all),
    newest first across both folders, until the rows reach `budget` bytes of escaped JSON."""
    files = {name: _step_files(run / name) for name in ("rollouts", "val")}
    queue = []
    for name, by_step in files.items():
        chosen = sorted(by_step)[0 if keep is None else max(len(by_step) - keep, 0):]
        if len(chosen) < len(by_step):
            notes.append(f"{name}: {len(by_step)} steps dumped, the last {len(chosen)} embedded "
                         f"(`hyflow view --steps all` embeds them all)")
        queue += [(step, name) for step in chosen]
    out: dict[str, dict[str, list]] = {"rollouts": {}, "val": {}}
    used, full, left_out = 0, False, {"rollouts": [], "val": []}
    for step, name in sorted(queue, key=lambda q: (-q[0], q[1])):
        if full:
            left_out[name].append(step)
            continue
        rows, total = [], 0
        for obj in _read_jsonl(files[name][step], notes):
            row = _row(obj, step)
            if row is None:
                continue
            total += 1
            size = len(_script_json(row).encode()) + 1
            if used + size > budget:
                full = True
                continue
            rows.append(row)
            used += size
        if rows:
            out[name][str(step)] = rows
        if len(rows) < total:
            notes.append(f"{name}/step_{step}.jsonl: {len(rows)} of {total} rows embedded "
                         "(the page reached --max-mb)")
    for name, left in left_out.items():
        if left:
            what = f"steps {min(left)}..{max(left)} ({len(left)} files)" if len(left) > 1 else f"step {left[0]}"
            notes.append(f"{name}: {what} left out (the page reached --max-mb)")
    return out


# ---- rendering -----------------------------------------------------------------------------

def render(run_dir, steps: int | str | None = DEFAULT_STEPS, max_mb: float = DEFAULT_MAX_MB) -> str:
    """The HTML page of `run_dir`. steps: the last N dumped steps per folder to embed ("all" or None:
    every one); max_mb caps the page size (rollout rows beyond it are left out, newest kept)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ViewError(f"{run}: no such run directory")
    if not (run / "metrics.jsonl").is_file():
        raise ViewError(f"{run}: no metrics.jsonl (is this a hyflow run directory?)")
    keep = None if steps in (None, "all") else int(steps) if str(steps).isdigit() else -1
    if keep is not None and keep < 0:
        raise ViewError(f"steps must be 'all' or a number >= 0, not {steps!r}")
    notes: list[str] = []
    template = TEMPLATE.read_text(encoding="utf-8")
    data = {"run": _config(run, notes), "notes": notes, "metrics": _metrics(run / "metrics.jsonl", notes)}
    budget = int(max_mb * 2**20) - len(template.encode()) - len(_script_json(data).encode()) - 64 * 1024
    data["rollouts"] = _rollouts(run, keep, max(budget, 0), notes)

    script = re.search(r'<script id="hyflow-main">(.*?)</script>', template, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; "
           f"base-uri 'none'; form-action 'none'")
    head, sep, tail = template.replace("__HYFLOW_CSP__", csp).partition("__HYFLOW_DATA__")
    return head + _script_json(data) + tail


def _steps_arg(v: str):
    if v == "all":
        return v
    if v.isdigit():
        return int(v)
    raise argparse.ArgumentTypeError(f"expected 'all' or a number >= 0, got {v!r}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hyflow view", description="Write one self-contained HTML page of a run.")
    parser.add_argument("run_dir", help="the run directory (trainer.output_dir)")
    parser.add_argument("--out", help="the HTML file to write (default RUN_DIR/view.html)")
    parser.add_argument("--steps", type=_steps_arg, default=DEFAULT_STEPS,
                        help=f"embed the rollouts of the last N dumped steps, or 'all' (default {DEFAULT_STEPS})")
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB,
                        help="cap on the page size in MB; older rollouts are left out first "
                             f"(default {DEFAULT_MAX_MB:g})")
    args = parser.parse_args(argv)
    try:
        page = render(args.run_dir, steps=args.steps, max_mb=args.max_mb)
        out = Path(args.out) if args.out else Path(args.run_dir) / "view.html"
        out.write_text(page, encoding="utf-8")
    except (ViewError, OSError) as e:
        print(f"hyflow view: {e}", file=sys.stderr)
        return 2
    size = len(page.encode())
    shown = f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size // 1024} KB"
    print(f"hyflow view: wrote {out} ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
