"""benchmarks/settings_ab.py: arms are parsed strictly, and an A/B of two real embedded
servers runs end to end (tiny checkpoint, one short round) into a table and JSON."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_DIR))  # settings_ab imports service_load from beside it
_spec = importlib.util.spec_from_file_location("settings_ab", _DIR / "settings_ab.py")
settings_ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(settings_ab)


def test_an_arm_is_a_name_and_variables():
    assert settings_ab.parse_arm("on=DEBM_A=1,DEBM_B=x") == ("on", ["DEBM_A=1", "DEBM_B=x"])
    for bad in ("on", "on=", "=DEBM_A=1", "on=DEBM_A"):
        with pytest.raises(argparse.ArgumentTypeError):
            settings_ab.parse_arm(bad)


def test_it_needs_two_distinct_arms():
    with pytest.raises(SystemExit):
        settings_ab.main(["--arm", "a=DEBM_MAX_WAIT_MS=2"])
    with pytest.raises(SystemExit):
        settings_ab.main(["--arm", "a=DEBM_MAX_WAIT_MS=2", "--arm", "a=DEBM_MAX_WAIT_MS=0"])


@pytest.mark.system
def test_two_embedded_servers_side_by_side(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "ab.json"
    assert settings_ab.main([
        "--arm", "window=DEBM_MAX_WAIT_MS=2", "--arm", "none=DEBM_MAX_WAIT_MS=0",
        "--checkpoint", str(tiny_checkpoint), "--rounds", "1", "--clients", "3",
        "--per-client", "2", "--sequential", "2", "--mixed-seconds", "0.3",
        "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["arms"]) == ["window", "none"]
    for arm in result["arms"].values():
        (only,) = arm["rounds"]
        assert only["concurrent"]["codes"] == {"200": 6}  # 3 clients x 2, none refused
        assert only["concurrent"]["ratio"] > 0 and only["one_image"]["service_p50_s"] > 0
        assert only["generate64"]["status"] == 200
        assert only["during_generate"]["requests"] >= 1
        assert set(arm["median"]) >= {"/generate n=64: service / direct"}
    table = capsys.readouterr().out
    assert "| measure | window: median (rounds) | none: median (rounds) |" in table
