"""The texture+semantic OOD score: standardised on training images, the smaller reading wins,
independent of batch mates, traced bit for bit like eager, and refused when it cannot be
standardised as it was calibrated."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from model.checkpoints import load_checkpoint, read_manifest
from model.data import to_model_range
from model.formats.config import ConfigError, ScoringConfig
from model.formats.manifest import CheckpointError
from model.pipeline import (interpret_scores, load_splits, prepare_for_inference,
                            score_images, score_readings)
from model.scores import FEATURE_FORM, combined_score, reference_statistics, score_features


def test_combined_score_is_the_smaller_standardised_feature():
    e = math.e
    # readings are -U^c and -U^h; features -log U^c and -log(U^h / U^c)
    readings = {"texture": torch.tensor([-1.0, -e, -e ** 2]),
                "semantic": torch.tensor([-e ** 3, -e, -e ** 2])}
    features = score_features(readings)
    assert torch.allclose(features["texture"], torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64))
    assert torch.allclose(features["semantic"], torch.tensor([-3.0, 0.0, 0.0], dtype=torch.float64))
    reference = {"texture": {"mean": -1.0, "std": 1.0}, "semantic": {"mean": -1.0, "std": 2.0}}
    # texture z: 1, 0, -1; semantic z: -1, 0.5, 0.5
    assert torch.allclose(combined_score(readings, reference), torch.tensor([-1.0, 0.0, -1.0]),
                          atol=1e-6)
    stats = reference_statistics(readings)
    assert stats["count"] == 3 and stats["form"] == FEATURE_FORM
    assert stats["texture"]["mean"] == pytest.approx(-1.0)
    assert stats["semantic"]["mean"] == pytest.approx(-1.0)


def test_a_semantic_error_that_grows_with_the_image_complexity_is_not_an_alarm():
    """U^h twice as large on an image whose U^c is also twice as large reads the same: the
    semantic feature is U^h relative to U^c."""
    readings = {"texture": torch.tensor([-1.0, -2.0]), "semantic": torch.tensor([-3.0, -6.0])}
    semantic = score_features(readings)["semantic"]
    assert semantic[0].item() == pytest.approx(semantic[1].item())


def test_unknown_score_is_refused():
    with pytest.raises(ConfigError, match="scoring.score"):
        ScoringConfig(score="semantic").validate()


@pytest.fixture(scope="module")
def combined_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint switched to texture+semantic by the CLI, which recalibrates it."""
    from debm.cli import main

    target = tmp_path_factory.mktemp("combined") / "ck"
    shutil.copytree(tiny_checkpoint, target)
    assert main(["calibrate", "--checkpoint", str(target), "--score", "texture+semantic"]) == 0
    return target


def test_calibrate_switches_the_score_and_stores_its_reference(combined_checkpoint):
    document = read_manifest(combined_checkpoint)
    assert document["config"]["scoring"]["score"] == "texture+semantic"
    calibration = document["calibration"]
    assert calibration["score"] == "texture+semantic"
    reference = calibration["reference"]
    assert reference["split"] == "train" and reference["count"] >= 2
    assert reference["texture"]["std"] > 0 and reference["semantic"]["std"] > 0
    assert document["metadata"]["scoring_updates"][-1]["changed"]["score"]["new"] == \
        "texture+semantic"


def test_combined_scores_follow_the_stored_reference_and_batch_mates_do_not_matter(
        combined_checkpoint):
    loaded = load_checkpoint(combined_checkpoint)
    _, holdout = load_splits(loaded.config)
    x = to_model_range(holdout.images[:6])
    readings = score_readings(loaded, x)
    assert set(readings) == {"texture", "semantic"}
    scores = score_images(loaded, x)
    assert torch.equal(scores, combined_score(readings, loaded.calibration["reference"]))
    # alone: equal up to float32 rounding of the differently shaped convolution, as for the
    # texture score (tests/worker/test_batching.py)
    torch.testing.assert_close(score_images(loaded, x[2:3]), scores[2:3], rtol=1e-6, atol=1e-5)
    scoring = loaded.config.scoring
    info = interpret_scores(loaded.calibration, scores, sigma=0.05, draws=scoring.draws,
                            seed=scoring.seed, score="texture+semantic")
    assert all("percentile" in row for row in info)
    assert interpret_scores(loaded.calibration, scores, sigma=0.05,
                            draws=loaded.config.scoring.draws,
                            seed=loaded.config.scoring.seed, score="texture") == [{}] * 6


def test_traced_semantic_reading_equals_eager(combined_checkpoint):
    eager = load_checkpoint(combined_checkpoint)
    traced = prepare_for_inference(load_checkpoint(combined_checkpoint))
    assert set(traced.scoring_chunks) == {"texture", "semantic"}
    size = eager.config.network.image_size
    x = torch.rand((5, 1, size, size), generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert torch.equal(score_images(eager, x), score_images(traced, x))


def test_combined_score_refuses_other_settings_and_a_missing_reference(combined_checkpoint,
                                                                       tmp_path):
    loaded = load_checkpoint(combined_checkpoint)
    x = torch.zeros((1, 1, loaded.config.network.image_size, loaded.config.network.image_size))
    with pytest.raises(ConfigError, match="standardised at"):
        score_images(loaded, x, sigma=0.2)
    target = tmp_path / "uncalibrated"
    shutil.copytree(combined_checkpoint, target)
    manifest = json.loads((target / "checkpoint.json").read_text())
    manifest["calibration"] = None
    (target / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="debm calibrate"):
        score_images(load_checkpoint(target), x)
    # a reference of other features (the raw readings, before FEATURE_FORM) is refused too
    manifest["calibration"] = read_manifest(combined_checkpoint)["calibration"]
    del manifest["calibration"]["reference"]["form"]
    (target / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="other features"):
        score_images(load_checkpoint(target), x)
