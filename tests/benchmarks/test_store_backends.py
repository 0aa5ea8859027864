"""benchmarks/store_backends.py: both stacks (local backend, S3 backend on moto) start, serve
and are measured into a table and JSON, at the smallest sizes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_DIR))  # store_backends imports service_load from beside it
_spec = importlib.util.spec_from_file_location("store_backends", _DIR / "store_backends.py")
store_backends = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store_backends)


@pytest.mark.system
def test_local_and_s3_side_by_side(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "store.json"
    assert store_backends.main(["--checkpoint", str(tiny_checkpoint), "--sequential", "3",
                                "--per-client", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["arms"]) == ["local", "s3"]
    for arm in result["arms"].values():
        assert arm["cold_s"] > 0 and arm["p50_s"] > 0
        assert arm["clients_32"]["codes"] == {"200": 32}
    table = capsys.readouterr().out
    assert "| measure" in table and "s3 (moto)" in table and "32 clients img/s" in table
    assert result["command"].startswith("python ")
