"""benchmarks/cpu_split.py: a real embedded server under a short burst, its threads' CPU and
run-queue wait read from /proc, into a table and JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_DIR))  # cpu_split imports service_load from beside it
_spec = importlib.util.spec_from_file_location("cpu_split", _DIR / "cpu_split.py")
cpu_split = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cpu_split)

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux /proc")


def test_schedstat_of_this_process_counts_its_threads():
    stats = cpu_split.thread_schedstat(__import__("os").getpid())
    assert stats and all(cpu >= 0 and wait >= 0 for cpu, wait in stats.values())
    busy, idle = cpu_split.machine_ticks()
    assert busy > 0 and idle >= 0


@pytest.mark.system
def test_a_burst_against_an_embedded_server(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "split.json"
    assert cpu_split.main(["--checkpoint", str(tiny_checkpoint), "--clients", "3",
                           "--per-client", "2", "--bursts", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["bursts"]
    assert row["codes"] == {"200": 6} and row["images"] == 6
    assert row["model_cpu_ms"] > 0 and row["model_wait_ms"] >= 0
    assert 0 < row["machine_busy_share"] <= 1
    assert "| burst | images/s | model CPU |" in capsys.readouterr().out
