"""eval-ood and eval-samples on a tiny model: JSON shapes through the real CLI, baselines,
and the pieces (kNN score, baseline lookup) checked against brute force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from debm.cli import main
from model.config import preset
from model.evaluation import knn_pixel_scores, resolve_baseline
from model.ood_sets import OOD_SETS
from model.pipeline import run_training

METRIC_KEYS = {"auroc", "aupr_in", "fpr95"}


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """A warm-up-only tiny run, and a run that continues it contrastively and records it as
    its warm-up checkpoint (relative path), as the demo training does."""
    root = tmp_path_factory.mktemp("eval-runs")
    config = preset("tiny")
    warm = run_training(config.replace(training={"iterations": 0}), root / "warm",
                        device="cpu")
    full = run_training(config, root / "full", init_from=warm, device="cpu",
                        extra_metadata={"warmup_checkpoint": "../warm"})
    return {"warm": warm, "full": full, "root": root}


# --- pieces --------------------------------------------------------------------------------

def test_knn_pixel_scores_match_brute_force_across_chunks():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 256, (37, 1, 4, 4), generator=generator, dtype=torch.uint8)
    queries = torch.rand((11, 1, 4, 4), generator=generator) * 2 - 1
    queries[3] = reference[5].float() / 127.5 - 1  # an exact member: distance 0
    expected = -torch.cdist(queries.flatten(1).double(),
                            (reference.double() / 127.5 - 1).flatten(1)).min(1).values
    got = knn_pixel_scores(queries, reference, query_chunk=4, reference_chunk=10)
    assert torch.allclose(got.double(), expected, atol=1e-3)
    assert got[3].abs() < 1e-2


def test_resolve_baseline(tiny_runs):
    full, warm = tiny_runs["full"], tiny_runs["warm"]
    path, note = resolve_baseline(full, {"warmup_checkpoint": "../warm"}, None)
    assert path.resolve() == warm.resolve() and note is None
    path, note = resolve_baseline(full, {"warmup_checkpoint": str(warm.resolve())}, None)
    assert path == warm.resolve() and note is None
    path, note = resolve_baseline(full, {}, None)
    assert path is None and "dae_only omitted" in note
    path, note = resolve_baseline(full, {"warmup_checkpoint": "../gone"}, None)
    assert path is None and "not there" in note
    assert resolve_baseline(full, {}, warm) == (warm, None)
    from model.checkpoints import CheckpointError

    with pytest.raises(CheckpointError):
        resolve_baseline(full, {}, tiny_runs["root"] / "nowhere")


# --- eval-ood ------------------------------------------------------------------------------

def _check_ood_shape(report: dict, baselines: set[str]) -> None:
    assert {"ood", "baselines", "sigma", "draws"} <= set(report)
    assert set(report["ood"]) == set(OOD_SETS)
    assert set(report["baselines"]) == baselines
    for table in [report["ood"], *report["baselines"].values()]:
        assert set(table) == set(OOD_SETS)
        for metrics in table.values():
            assert set(metrics) == METRIC_KEYS
            assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_eval_ood_cli_json_with_recorded_baseline(tiny_runs, tmp_path, capsys):
    out = tmp_path / "ood.json"
    code = main(["eval-ood", "--checkpoint", str(tiny_runs["full"]), "--per-set", "12",
                 "--json", str(out), "--device", "cpu"])
    assert code == 0
    report = json.loads(out.read_text())
    _check_ood_shape(report, {"dae_only", "knn_pixel"})
    assert report["sigma"] == 0.05 and report["draws"] == preset("tiny").scoring.draws
    assert Path(report["baseline_checkpoint"]).resolve() == tiny_runs["warm"].resolve()
    assert report["notes"] == []
    # kNN in pixel space separates uniform noise from digits outright; a sign error in the
    # score (distance instead of minus distance) would give 0 here.
    assert report["baselines"]["knn_pixel"]["uniform"]["auroc"] > 0.99
    assert set(report["blank_canvas"]) == {"model", "dae_only", "knn_pixel"}
    table = capsys.readouterr().out
    for name in (*OOD_SETS, "dae_only", "knn_pixel", "blank canvas"):
        assert name in table


def test_eval_ood_without_baseline_says_so(tiny_runs, tmp_path):
    out = tmp_path / "ood.json"
    assert main(["eval-ood", "--checkpoint", str(tiny_runs["warm"]), "--per-set", "6",
                 "--json", str(out), "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    _check_ood_shape(report, {"knn_pixel"})
    assert any("dae_only omitted" in note for note in report["notes"])


def test_eval_ood_explicit_baseline_and_determinism(tiny_runs, tmp_path):
    from model.evaluation import evaluate_ood

    a = evaluate_ood(tiny_runs["warm"], baseline_checkpoint=tiny_runs["warm"], per_set=6,
                     seed=1, device="cpu")
    b = evaluate_ood(tiny_runs["warm"], baseline_checkpoint=tiny_runs["warm"], per_set=6,
                     seed=1, device="cpu")
    # The baseline is the model itself here, so both columns must agree exactly.
    assert a["baselines"]["dae_only"] == a["ood"]
    assert a["ood"] == b["ood"] and a["baselines"] == b["baselines"]


def test_eval_ood_missing_explicit_baseline_is_a_user_error(tiny_runs, capsys):
    code = main(["eval-ood", "--checkpoint", str(tiny_runs["warm"]), "--per-set", "4",
                 "--baseline", str(tiny_runs["root"] / "nowhere"), "--device", "cpu"])
    assert code == 2
    assert "not a checkpoint" in capsys.readouterr().err
