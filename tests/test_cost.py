"""Cost accounting by hand: device-seconds per phase and the run summary."""
from __future__ import annotations

import json

import pytest

from orchestrator.cost import step_costs, summarize, summary_line

SHARES = {"trainer": {"CPU": 1.0, "GPU": 0.0}, "rollout": {"CPU": 0.4, "GPU": 0.0}, "helpers": {"CPU": 0.2}}


def test_step_costs_by_phase():
    times = {"timing/rollout_s": 10.0, "timing/train_s": 20.0, "timing/sync_s": 2.0, "timing/step_s": 33.0}
    c = step_costs(times, SHARES, {"CPU": 2.0, "GPU": 0.0})
    assert c == {"cost/cpu_s/rollout": pytest.approx(6.0),     # (0.4 + 0.2) x 10
                 "cost/cpu_s/train": pytest.approx(20.0),      # 1.0 x 20
                 "cost/cpu_s/sync": pytest.approx(2.8),        # (1.0 + 0.4) x 2
                 "cost/reserved_cpu_s": pytest.approx(66.0)}   # 2 CPUs x 33 s


def test_summary_totals_and_per_1k_samples(tmp_path):
    rows = [{"step": 0, "val/accuracy": 0.2}]
    for _ in range(2):
        rows.append({"step": 1, "timing/step_s": 1800.0, "cost/reserved_cpu_s": 3600.0, "cost/cpu_s/train": 1800.0,
                     "cost/samples": 500, "cost/tokens_generated": 1000, "cost/tokens_trained": 3000})
    s = summarize(rows, tmp_path)
    assert s["steps"] == 2 and s["samples"] == 1000 and s["tokens_trained"] == 6000
    assert s["cpu_hours_reserved"] == pytest.approx(2.0) and s["cpu_hours_busy"] == pytest.approx(1.0)
    assert s["cpu_hours_per_1k_samples"] == pytest.approx(2.0)
    assert json.loads((tmp_path / "summary.json").read_text()) == s
    assert "2.000 CPU-hours per 1,000 samples" in summary_line(s)
