"""benchmarks/gpu_check.py at toy sizes on the CPU, so that the GPU check cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_cpu_at_small_sizes(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu",
                           "--small", "--skip-tests", "--iters", "2", "--bf16-iters", "1", "--n", "4",
                           "--score-n", "16", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] and all(report["checks"].values())
    assert report["training"]["iterations"] == 2 and report["training"]["it_per_s"] > 0
    assert report["sampling"]["float32"]["finite"] and report["sampling"]["bfloat16"]["finite"]
    assert report["scoring"]["images_per_s"] > 0
    assert report["worker"]["generate"]["samples"] == 4 and report["worker"]["score"]["ok"]
    assert "paper training, 2 it" in done.stdout
