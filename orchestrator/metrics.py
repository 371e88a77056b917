"""Run-directory outputs: metrics.jsonl (one JSON object per step, always), console lines,
reward.png, and the trackers named in `trainer.loggers`:

- "tensorboard": event files in RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR/tensorboard`);
- "wandb": an offline run in RUN_DIR/wandb (no network; `wandb sync RUN_DIR/wandb/offline-run-*`
  uploads it later from a machine that has one).
Both come with the `tracking` extra (`pip install -e '.[tracking]'`; `scripts/setup.sh --test`
installs it). Every numeric value of a row is logged at the row's `step`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path


class Timer:
    """`with timer("rollout"):` accumulates wall seconds under `timing/rollout_s`."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = f"timing/{name}_s"
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - t0


log = logging.getLogger("hyflow")


class MetricsLog:
    """`metrics.jsonl`, one JSON object per logged row (each with its `step`).

    `keep_through_step`: a resumed run keeps the rows up to its checkpoint's step and rewrites the
    file atomically without the later ones (they are logged again as the run redoes those steps);
    None: start a new file. A torn last line (a crash or a full disk mid-write) is dropped with a
    warning; a bad line anywhere else is an error naming the file and line. `truncate(step)` does the
    same in place (a run that replaced a dead worker goes back to its newest checkpoint)."""

    def __init__(self, run_dir: Path, keep_through_step: int | None = None, loggers: list[str] = (),
                 experiment: str = "hyflow", config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.rows: list[dict] = []
        if keep_through_step is not None and self.path.exists():
            self.rows = read_metrics(self.path)
            self.truncate(keep_through_step)
        self.trackers = [make_tracker(name, self.run_dir, experiment, config or {})
                         for name in loggers if name != "console"]

    def log(self, row: dict) -> None:
        row = {k: _plain(v) for k, v in row.items()}
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        numeric = {k: float(v) for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for t in self.trackers:
            t.log(numeric, int(row["step"]))

    def truncate(self, step: int) -> None:
        """Drop the rows logged after `step` (file rewritten atomically). Trackers keep what they got."""
        self.rows = [r for r in self.rows if r.get("step", 0) <= step]
        self._rewrite()

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def plot_reward(self, filename: str = "reward.png", train_key: str = "reward/mean",
                    train_label: str = "train reward (sampled)") -> Path:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.rows if isinstance(r.get(train_key), (int, float))]
        rewards = [r[train_key] for r in self.rows if isinstance(r.get(train_key), (int, float))]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        ax.plot(steps, rewards, marker="o", label=train_label)
        for key, label in (("val/accuracy", "val accuracy"), ("val/success_rate", "val success rate")):
            val = [(r["step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))]
            if val:
                ax.plot(*zip(*val), marker="s", linestyle="--", label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        out = self.run_dir / filename
        fig.savefig(out)
        plt.close(fig)
        return out


TRACKERS = ("console", "tensorboard", "wandb")


class _TensorBoard:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, experiment: str, config: dict):
        import wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(mode="offline", dir=str(run_dir), project="hyflow", name=experiment, config=config,
                              reinit="create_new")

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        # `finish` returns before wandb-core has flushed the run file (measured: 2 of 30 offline runs
        # left only the 7-byte header on disk); `teardown` waits for the service to exit, so the
        # file is complete when `close` returns.
        import wandb
        self.run.finish()
        wandb.teardown()


def make_tracker(name: str, run_dir: Path, experiment: str, config: dict):
    try:
        if name == "tensorboard":
            return _TensorBoard(run_dir)
        if name == "wandb":
            return _Wandb(run_dir, experiment, config)
    except ImportError as e:
        raise RuntimeError(f"trainer.loggers: {name!r} needs the tracking extra (pip install -e '.[tracking]'): {e}") from None
    raise ValueError(f"trainer.loggers: unknown logger {name!r}; choose from {list(TRACKERS)}")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a torn last line is dropped with a warning."""
    lines = Path(path).read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                log.warning("%s: dropped a torn last line (%d chars): %s", path, len(line), e)
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON ({e}); only a torn last line is tolerated") from None
    return rows


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v


def console_line(row: dict) -> str:
    keys = [("reward/mean", "reward", "{:.3f}"), ("response_length/mean", "len", "{:.0f}"),
            ("actor/pg_loss", "pg", "{:+.4f}"), ("actor/kl", "kl", "{:.4f}"), ("actor/entropy", "ent", "{:.3f}"),
            ("timing/step_s", "step_s", "{:.1f}"), ("sync/max_abs_diff", "sync_diff", "{:.1e}"),
            ("env/success_rate", "success", "{:.3f}"), ("for/log_r_mean", "log_r", "{:.2f}"),
            ("for/accuracy", "acc", "{:.3f}"), ("val/accuracy", "val_acc", "{:.3f}"),
            ("val/success_rate", "val_success", "{:.3f}")]
    parts = [f"step {row['step']}"]
    parts += [f"{short}={fmt.format(row[k])}" for k, short, fmt in keys if isinstance(row.get(k), (int, float))]
    return "  ".join(parts)
