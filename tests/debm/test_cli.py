"""The debm command line end to end: tiny train -> sample -> score, and clean errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def debm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "debm.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    result = debm("train", "--dataset", "mnist5k", "--preset", "tiny", "--iters", "2",
                  "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and Path(summary["checkpoint"]) == out
    return out


def _write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_sample_is_byte_identical_for_a_seed(trained, tmp_path):
    outputs = []
    for name in ("a", "b"):
        result = debm("sample", "--checkpoint", str(trained), "--n", "4", "--seed", "9",
                      "--out", str(tmp_path / f"{name}.png"), "--npz", str(tmp_path / f"{name}.npz"))
        assert result.returncode == 0, result.stderr
        outputs.append((tmp_path / f"{name}.png").read_bytes())
    assert outputs[0] == outputs[1]
    arrays = np.load(tmp_path / "a.npz")["x"]
    assert arrays.shape == (4, 1, 8, 8) and arrays.min() >= -1 and arrays.max() <= 1
    with Image.open(io.BytesIO(outputs[0])) as grid:
        assert grid.format == "PNG"
    other = debm("sample", "--checkpoint", str(trained), "--n", "4", "--seed", "10",
                 "--sampler", "annealed", "--out", str(tmp_path / "c.png"))
    assert other.returncode == 0 and (tmp_path / "c.png").read_bytes() != outputs[0]


def test_score_prints_json_and_is_deterministic(trained, tmp_path):
    rng = np.random.default_rng(0)
    files = [_write_png(tmp_path / "noise.png", rng.integers(0, 256, (28, 28), dtype=np.uint8)),
             _write_png(tmp_path / "rgb.png", rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))]
    runs = [debm("score", "--checkpoint", str(trained), "--seed", "1", *map(str, files))
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    rows = json.loads(runs[0].stdout)
    assert [Path(r["file"]).name for r in rows] == ["noise.png", "rgb.png"]
    assert all(isinstance(r["score"], float) for r in rows)
    assert runs[0].stdout == runs[1].stdout


def test_default_scoring_uses_the_calibration(trained, tmp_path):
    file = _write_png(tmp_path / "x.png", np.zeros((28, 28), dtype=np.uint8))
    result = debm("score", "--checkpoint", str(trained), str(file))
    row = json.loads(result.stdout)[0]
    assert 0.0 <= row["percentile"] <= 100.0 and isinstance(row["is_ood"], bool)


@pytest.mark.parametrize("make_args, message", [
    (lambda ck, tmp: ["score", "--checkpoint", str(ck), str(tmp / "missing.png")],
     "cannot read"),
    (lambda ck, tmp: ["score", "--checkpoint", str(ck), str(tmp / "text.png")],
     "not an accepted image"),
    (lambda ck, tmp: ["sample", "--checkpoint", str(tmp), "--out", str(tmp / "o.png")],
     "not a checkpoint"),
    (lambda ck, tmp: ["train", "--dataset", str(tmp / "none.npz"), "--preset", "tiny",
                      "--out", str(tmp / "o")], "no such file"),
    (lambda ck, tmp: ["train", "--dataset", "mnist5k", "--preset", "tiny", "--set",
                      "training.lr=-1", "--out", str(tmp / "o")], "lr must be"),
    (lambda ck, tmp: ["sample", "--checkpoint", str(ck), "--n", "0", "--out", "x.png"],
     "must be >= 1"),
])
def test_bad_input_exits_non_zero_with_one_line(trained, tmp_path, make_args, message):
    (tmp_path / "text.png").write_text("this is not an image")
    result = debm(*make_args(trained, tmp_path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_of_the_wrong_shape(trained, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    manifest = json.loads((broken / "checkpoint.json").read_text())
    manifest["config"]["network"]["base_width"] = 16
    (broken / "checkpoint.json").write_text(json.dumps(manifest))
    result = debm("sample", "--checkpoint", str(broken), "--out", str(tmp_path / "o.png"))
    assert result.returncode == 2 and "do not fit" in result.stderr


def test_resume_continues_to_more_iterations(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    result = debm("train", "--dataset", "mnist5k", "--preset", "tiny", "--iters", "3",
                  "--seed", "3", "--out", str(run), "--resume")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 5


def test_set_sampler_changes_generation_defaults_and_records_them(trained, tmp_path):
    import shutil

    tuned = tmp_path / "tuned"
    shutil.copytree(trained, tuned)
    weights_before = {p.name: p.read_bytes() for p in tuned.glob("*.safetensors")}
    result = debm("set-sampler", "--checkpoint", str(tuned), "steps_latent=1",
                  "temperature_latent=0.25")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps_latent"] == 1
    manifest = json.loads((tuned / "checkpoint.json").read_text())
    assert manifest["config"]["sampler"]["temperature_latent"] == 0.25
    history = manifest["metadata"]["sampler_updates"]
    assert history[-1]["changed"]["steps_latent"] == {"old": 3, "new": 1}
    assert "set-sampler" in history[-1]["note"]
    assert {p.name: p.read_bytes() for p in tuned.glob("*.safetensors")} == weights_before

    # The new default is what `debm sample` uses: the same seed now gives other samples.
    outs = {}
    for name, ck in (("orig", trained), ("tuned", tuned)):
        run = debm("sample", "--checkpoint", str(ck), "--n", "2", "--seed", "0",
                   "--out", str(tmp_path / f"{name}.png"), "--npz", str(tmp_path / f"{name}.npz"))
        assert run.returncode == 0, run.stderr
        outs[name] = np.load(tmp_path / f"{name}.npz")["x"]
    assert not np.array_equal(outs["orig"], outs["tuned"])

    for bad, message in ((["bogus=1"], "unknown setting"), (["steps_latent=-1"], ">= 0"),
                         (["steps_latent"], "NAME=VALUE")):
        failed = debm("set-sampler", "--checkpoint", str(tuned), *bad)
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr
    assert json.loads((tuned / "checkpoint.json").read_text()) == manifest


def test_train_can_start_from_an_exported_checkpoint(trained, tmp_path):
    exported = tmp_path / "exported"
    assert debm("export", "--checkpoint", str(trained), "--out", str(exported)).returncode == 0
    assert json.loads((exported / "checkpoint.json").read_text())["training_state"] is None
    result = debm("train", "--dataset", "mnist5k", "--preset", "tiny", "--warmup", "0",
                  "--iters", "1", "--seed", "4", "--init-from", str(exported),
                  "--out", str(tmp_path / "more"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "more" / "checkpoint.json").read_text())
    # Weights only: the new run counts its own steps from 0.
    assert manifest["step"] == 1
    assert manifest["metadata"]["init_from_weights"] == str(exported)


def _subcommands(parser, prefix=()):
    """(command path, parser) of every `debm` subcommand, `debm remote ...` included."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subcommands(sub, (*prefix, name))


def test_every_subcommand_describes_every_option():
    """`debm X --help` explains each option (issue 25 item 6); a new option without help fails."""
    from debm.cli import build_parser

    found = list(_subcommands(build_parser()))
    assert len(found) >= 18, [path for path, _ in found]
    undocumented = [f"debm {' '.join(path)} {action.dest}" for path, sub in found
                    for action in sub._actions
                    if action.dest != "help" and not action.help
                    and not action.__class__.__name__.startswith("_SubParsers")]
    assert undocumented == []


def test_set_sampler_help_lists_the_declared_sampler_settings(capsys):
    from debm.cli import main
    from model.formats.config import SamplerConfig
    from model.formats.settingspec import field_specs

    with pytest.raises(SystemExit):
        main(["set-sampler", "--help"])
    text = capsys.readouterr().out
    for name, _, spec, _ in field_specs(SamplerConfig):
        assert f"  {name} (" in text and spec.meaning in text
