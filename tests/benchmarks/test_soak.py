"""benchmarks/soak.py in its 60-second mode against a real embedded server (tiny checkpoint):
the steady mix with a server restart, per-sample figures, a table, JSON and a PNG plot; no
accepted job lost, no 500, every succeeded result readable while it was kept."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_DIR))  # soak imports service_load and soak_report from beside it
_spec = importlib.util.spec_from_file_location("soak", _DIR / "soak.py")
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)

pytestmark = pytest.mark.system


def test_sixty_second_soak_in_embedded_mode(tmp_path, tiny_checkpoint, capsys):
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    assert soak.main(["--mode", "embedded", "--duration", "60", "--sample-seconds", "10",
                      "--retention", "60", "--clients", "6", "--train-every", "40",
                      "--drain", "120", "--checkpoint", str(tiny_checkpoint),
                      "--json", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert result["accepted_jobs"] > 20 and result["lost_jobs"] == 0, result["final_states"]
    assert result["http_500s"] == 0 and result["unreadable_results"] == [], result["codes"]
    assert [f["fault"] for f in result["faults"]] == ["server"]
    assert len(result["samples"]) >= 6
    last = result["samples"][-1]
    assert last["processes"]["serve"]["rss_bytes"] > 0 and last["data_dir_bytes"] > 0
    assert "jobs.sqlite" in last["sqlite_bytes"]
    assert any(k.startswith("bad_upload 4") for k in result["codes"])
    assert any(k.startswith("events 200") for k in result["codes"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "soak (embedded, 60.0 s" in capsys.readouterr().out
