"""benchmarks/gpu_check.py at toy sizes on the CPU, so that the GPU check cannot rot, and its
budget planning: a step that does not fit is written as skipped, and every line is JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "check.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu",
                           "--small", "--json", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert printed == lines  # each step is printed and appended as it finishes
    return done, lines


def test_gpu_check_runs_every_step_on_cpu_at_small_sizes(tmp_path):
    done, lines = run_check(tmp_path, "--skip-tests", "--score-n", "16",
                            "--budget-seconds", "3000")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = {line["step"]: line for line in lines}
    assert [line["step"] for line in lines] == ["a_training", "b_paper_timing", "c_scoring",
                                                "d_worker", "e_model_tests", "summary"]
    training = steps["a_training"]
    for precision in ("float32", "bfloat16"):
        assert training[precision]["iterations"] == 5
        assert training[precision]["seconds_per_iteration"] > 0
        assert training[precision]["batch_size"] == 8  # --small; 128 on the GPU
    timing = steps["b_paper_timing"]
    assert timing["two_stage_seconds"] > 0 and timing["annealed_seconds"] > 0
    assert timing["paper_ratio"] == 13.9
    assert steps["c_scoring"]["draws"] == 1 and steps["c_scoring"]["sigma"] == 0.05
    assert steps["d_worker"]["generate"]["samples"] == 4 and steps["d_worker"]["score"]["ok"]
    assert steps["e_model_tests"] == {"step": "e_model_tests", "skipped": "--skip-tests"}
    summary = steps["summary"]
    assert summary["passed"] and all(summary["checks"].values())
    assert len(summary["checks"]) == 8


def test_gpu_check_skips_what_does_not_fit_the_budget(tmp_path):
    done, lines = run_check(tmp_path, "--budget-seconds", "5")
    assert done.returncode == 1  # nothing was checked: not a pass
    steps = {line["step"]: line for line in lines}
    assert "skipped" in steps["a_training"] and "planned 60 s" in steps["a_training"]["skipped"]
    assert "skipped" in steps["e_model_tests"]
    assert steps["summary"]["passed"] is False and steps["summary"]["checks"] == {}
