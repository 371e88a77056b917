"""FoR step time: prefix-packed candidate scoring and update vs one row per (state, candidate).

    .venv/bin/python bench/for_bench.py                 # configs/for_blocksworld.yaml, 4 steps a side
    .venv/bin/python bench/for_bench.py --steps 6 --set for_.domain=game24

Two sides, each a child process running the recipe's `ForTrainer` for --steps steps from the same
seed: "packed" (for_.share_prefix=true: every distinct state prompt encoded once, its candidates
scored as segments of one row, a state repeated across trajectories once; workers/prefix_pack.py)
and "rows" (share_prefix=false: the layout before packing). Median step time over steps 2.. of
each, with the sampling (candidate scoring) and train (gfn_update) phases apart. Ends with one
JSON line: {"for_step_speedup": rows / packed, "for_train_speedup": .., "for_sample_speedup": ..}.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import REPO, parse, result, spawn  # noqa: E402

RECIPE = "configs/for_blocksworld.yaml"


def run(share: bool, steps: int, out: Path, overrides: list[str]) -> dict:
    from orchestrator.config import load_config
    from orchestrator.for_trainer import ForTrainer

    cfg = load_config(str(REPO / RECIPE), [
        f"trainer.total_steps={steps}", f"trainer.output_dir={out / ('packed' if share else 'rows')}",
        "trainer.val_every=0", "trainer.progress=false", f"for_.share_prefix={str(share).lower()}", *overrides])
    trainer = ForTrainer(cfg)
    rows = []
    try:
        for _ in range(steps):
            rows.append(trainer.step())
    finally:
        trainer.shutdown()
    return {k: [r.get(f"timing/{k}", 0.0) for r in rows] for k in ("step_s", "sample_s", "train_s")} | {
        "log_r_mean": [r["for/log_r_mean"] for r in rows], "loss": [r["for/loss"] for r in rows]}


def main() -> None:
    a = parse(__doc__, "steps", 4, {"packed": lambda n, out, o: run(True, n, out, o),
                                    "rows": lambda n, out, o: run(False, n, out, o)})
    with tempfile.TemporaryDirectory(prefix="for_bench_") as tmp:
        res = {}
        for side in a.sides.split(","):
            proc = spawn(__file__, side, a, Path(tmp))
            if proc.wait() != 0:
                raise SystemExit(f"{side} run failed")
            res[side] = result(side, Path(tmp))
    med = {s: {k: statistics.median(v[1:] or v) for k, v in r.items() if k.endswith("_s")} for s, r in res.items()}
    print(json.dumps({"recipe": RECIPE, "overrides": a.set, "runs": res, "median_s": med}, indent=1))
    if {"packed", "rows"} <= res.keys():
        ratio = {f"for_{k[:-2]}_speedup": round(med["rows"][k] / med["packed"][k], 3)
                 for k in ("step_s", "train_s", "sample_s") if med["packed"][k] > 0}
        print(json.dumps(ratio))  # one line, read by tools


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
