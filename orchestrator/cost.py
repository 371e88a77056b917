"""Cost accounting: device-seconds by phase, tokens, and the run's summary.

Per step (`step_costs`): for each timed phase, CPU- and GPU-seconds = the Ray resources of the
workers that run the phase x the phase's wall time (rollout: the engines and the env reserve;
ref / old_logprobs / values / train: the trainer ranks; sync: both), plus what the run's placement
group held over the whole step (`cost/reserved_*`: colocated roles keep their bundles while idle,
so this is what the run occupies). At the end (`summarize`): totals, tokens, samples and
device-hours per 1,000 samples, printed as one line and written to RUN_DIR/summary.json.
"""
from __future__ import annotations

import json
from pathlib import Path

PHASE_ROLES = {"rollout": ("rollout", "helpers"), "ref": ("trainer",), "old_logprobs": ("trainer",),
               "values": ("trainer",), "train": ("trainer",), "sync": ("trainer", "rollout")}


def step_costs(times: dict[str, float], shares: dict[str, dict[str, float]], reserved: dict[str, float]) -> dict:
    """times: {"timing/<phase>_s": seconds}; shares: role -> {"CPU": n, "GPU": n} summed over its
    workers; reserved: the placement group's {"CPU", "GPU"}."""
    out: dict[str, float] = {}
    for phase, roles in PHASE_ROLES.items():
        secs = times.get(f"timing/{phase}_s")
        if secs is None:
            continue
        for dev in ("CPU", "GPU"):
            held = sum(shares.get(r, {}).get(dev, 0.0) for r in roles)
            if held:
                out[f"cost/{dev.lower()}_s/{phase}"] = held * secs
    step = times.get("timing/step_s", 0.0)
    for dev in ("CPU", "GPU"):
        if reserved.get(dev):
            out[f"cost/reserved_{dev.lower()}_s"] = reserved[dev] * step
    return out


def summarize(rows: list[dict], run_dir: Path) -> dict:
    """Totals over the training rows of metrics.jsonl -> summary.json (and the dict)."""
    train = [r for r in rows if isinstance(r.get("timing/step_s"), (int, float))]
    total = lambda key: float(sum(r.get(key) or 0.0 for r in train))  # noqa: E731
    keys = sorted({k for r in train for k in r if k.startswith("cost/")})
    out = {k: total(k) for k in keys}
    samples = total("cost/samples")
    out.update({"steps": len(train), "wall_s": total("timing/step_s"), "samples": samples,
                "tokens_generated": total("cost/tokens_generated"), "tokens_trained": total("cost/tokens_trained")})
    for dev in ("cpu", "gpu"):
        busy = sum(v for k, v in out.items() if k.startswith(f"cost/{dev}_s/"))
        held = out.get(f"cost/reserved_{dev}_s", 0.0)
        if busy or held:
            out[f"{dev}_hours_busy"] = busy / 3600
            out[f"{dev}_hours_reserved"] = held / 3600
            out[f"{dev}_hours_per_1k_samples"] = held / 3600 / samples * 1000 if samples else None
    Path(run_dir, "summary.json").write_text(json.dumps(out, indent=1))
    return out


def summary_line(s: dict) -> str:
    dev = "gpu" if s.get("gpu_hours_reserved") else "cpu"
    per = s.get(f"{dev}_hours_per_1k_samples")
    return (f"summary: {s['steps']} steps, {s['wall_s'] / 60:.1f} min, {int(s['samples'])} samples, "
            f"{int(s['tokens_generated'])} tokens generated, {int(s['tokens_trained'])} trained; "
            f"{s.get(dev + '_hours_reserved', 0):.3f} {dev.upper()}-hours held "
            f"({s.get(dev + '_hours_busy', 0):.3f} busy)"
            + (f", {per:.3f} {dev.upper()}-hours per 1,000 samples" if per else ""))
