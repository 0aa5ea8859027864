"""benchmarks/drawn_shapes.py: the drawn OOD sets are seeded, hold ink where a digit would,
and the benchmark runs end to end on a texture+semantic checkpoint (and refuses others)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "drawn_shapes.py"
_spec = importlib.util.spec_from_file_location("drawn_shapes", _PATH)
drawn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(drawn)


@pytest.mark.parametrize("name", sorted(drawn.SETS))
def test_each_set_is_seeded_grey_and_not_blank(name):
    draw = drawn.SETS[name]
    first = np.asarray(draw(np.random.default_rng(5)))
    again = np.asarray(draw(np.random.default_rng(5)))
    other = np.asarray(draw(np.random.default_rng(6)))
    assert first.dtype == np.uint8 and first.ndim == 2
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.max() > 100  # something drawn, not a blank canvas


def test_letters_are_centred_like_digits():
    image = np.asarray(drawn.letter(np.random.default_rng(0))).astype(float)
    rows, cols = np.nonzero(image > 0)
    centre = (drawn.CANVAS - 1) / 2
    assert abs(rows.mean() - centre) < drawn.CANVAS / 6
    assert abs(cols.mean() - centre) < drawn.CANVAS / 6


def test_benchmark_runs_on_a_texture_semantic_checkpoint(tiny_checkpoint, tmp_path,
                                                         monkeypatch):
    from debm.cli import main as debm

    texture_only = tmp_path / "texture"
    shutil.copytree(tiny_checkpoint, texture_only)
    monkeypatch.setattr(sys, "argv", ["drawn_shapes.py", "--checkpoint", str(texture_only)])
    with pytest.raises(SystemExit, match="texture\\+semantic"):
        drawn.main()

    combined = tmp_path / "combined"
    shutil.copytree(tiny_checkpoint, combined)
    assert debm(["calibrate", "--checkpoint", str(combined), "--score", "texture+semantic"]) == 0
    out = tmp_path / "drawn.json"
    monkeypatch.setattr(sys, "argv", ["drawn_shapes.py", "--checkpoint", str(combined),
                                      "--n", "4", "--json", str(out)])
    assert drawn.main() == 0
    table = json.loads(out.read_text())["auroc"]
    assert set(table) == set(drawn.SETS)
    for row in table.values():
        assert set(row) == {"texture", "texture+semantic"}
        assert all(0.0 <= v <= 1.0 for v in row.values())
