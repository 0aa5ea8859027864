"""eval-ood and eval-samples on a tiny model: JSON shapes through the real CLI, baselines,
and the pieces (kNN score, baseline lookup) checked against brute force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from debm.cli import main
from model.evaluation import knn_pixel_scores, resolve_baseline
from model.formats.presets import preset
from model.ood_sets import OOD_SETS
from model.pipeline import load_splits, run_training

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


# --- classifier and eval-samples -----------------------------------------------------------

@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("classifier-cache")


@pytest.fixture(scope="session")
def tiny_splits():
    return load_splits(preset("tiny"))


def test_classifier_is_cached_and_separates_digits_from_noise(tiny_splits, classifier_cache):
    from model.classifier import classifier_for
    from model.data import to_model_range
    from model.evaluation import sample_metrics

    config = preset("tiny")
    first = classifier_for(config, tiny_splits, cache_dir=classifier_cache)
    second = classifier_for(config, tiny_splits, cache_dir=classifier_cache)
    assert second.from_cache and second.key == first.key
    assert second.accuracy == first.accuracy > 0.8  # 10 classes: chance is 0.1
    train, holdout = tiny_splits
    x = to_model_range(holdout.images[:64])
    assert torch.allclose(first.features(x), second.features(x))
    assert first.features(x).shape == (64, first.settings.feature_dim)
    probs = first.probabilities(x)
    assert torch.allclose(probs.sum(1), torch.ones(64), atol=1e-5)

    reference = first.features(to_model_range(holdout.images))
    noise = torch.rand((64, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    real = sample_metrics(first, to_model_range(train.images[:64]), reference)
    fake = sample_metrics(first, noise, reference)
    assert real["fd"] < fake["fd"] / 3
    assert sum(real["class_histogram"]) == 64 and len(real["class_histogram"]) == 10


def test_classifier_weights_do_not_depend_on_the_callers_thread_count():
    """CPU conv reductions depend on the thread count; without pinning it during training
    these two 28x28 runs differ in their weights (checked when this test was written)."""
    from model.classifier import ClassifierSettings, train_network
    from model.data import ImageDataset

    train, _ = load_splits(preset("demo"))
    subset = ImageDataset(train.images[:512], train.labels[:512], "mnist5k")
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            net = train_network(subset, channels=1, num_classes=10,
                                settings=ClassifierSettings(epochs=1))
            assert torch.get_num_threads() == threads  # the caller's setting is restored
            weights.append(net.state_dict())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_classifier_key_depends_on_settings_and_data(tiny_splits):
    from model.classifier import ClassifierSettings, cache_key

    train, holdout = tiny_splits
    base = cache_key(train, holdout, settings=ClassifierSettings(), num_classes=10)
    assert base == cache_key(train, holdout, settings=ClassifierSettings(), num_classes=10)
    assert base != cache_key(train, holdout, settings=ClassifierSettings(epochs=1),
                             num_classes=10)
    assert base != cache_key(train.subset(torch.arange(100)), holdout,
                             settings=ClassifierSettings(), num_classes=10)


def test_classifier_refuses_unlabelled_data(tiny_splits, tmp_path):
    from model.classifier import load_or_train
    from model.data import DatasetError, ImageDataset

    train, holdout = tiny_splits
    with pytest.raises(DatasetError, match="labels"):
        load_or_train(ImageDataset(train.images[:32], None, "folder"), holdout,
                      cache_dir=tmp_path)


def test_eval_samples_cli_json_rows_and_grids(tiny_runs, classifier_cache, tmp_path):
    from model.evaluation import SAMPLE_ROWS

    out, grids = tmp_path / "samples.json", tmp_path / "grids"
    code = main(["eval-samples", "--checkpoint", str(tiny_runs["full"]), "--n", "6",
                 "--grids", str(grids), "--classifier-cache", str(classifier_cache),
                 "--json", str(out), "--device", "cpu"])
    assert code == 0
    report = json.loads(out.read_text())
    assert {"classifier_accuracy", "rows"} <= set(report)
    assert 0.8 < report["classifier_accuracy"] <= 1.0
    assert list(report["rows"]) == list(SAMPLE_ROWS)
    sampler = preset("tiny").sampler
    k_plus_t = sampler.steps_latent + sampler.steps_pixel
    expected_steps = {"real": 0, "two_stage": k_plus_t, "semantic": sampler.steps_latent,
                      "texture_only": k_plus_t, "texture_only_10x": 10 * k_plus_t,
                      "annealed": sampler.annealed_levels * sampler.annealed_steps_per_level}
    for name, row in report["rows"].items():
        assert {"fd", "confidence", "class_histogram", "seconds_per_64", "steps"} <= set(row)
        assert row["steps"] == expected_steps[name]
        assert row["fd"] >= 0 and 0 < row["confidence"] <= 1
        assert len(row["class_histogram"]) == 10 and sum(row["class_histogram"]) == 6
        assert (row["seconds_per_64"] > 0) == (name != "real")
        assert (grids / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    # The 10x row runs ten times the steps; its reported time must show it (loose bound: the
    # CPU is shared).
    rows = report["rows"]
    assert rows["texture_only_10x"]["seconds_per_64"] > 1.5 * rows["texture_only"][
        "seconds_per_64"]


def test_eval_samples_semantic_row_alone_and_determinism(tiny_runs, classifier_cache):
    from model.evaluation import evaluate_samples

    kwargs = dict(n=4, seed=3, device="cpu", classifier_cache=classifier_cache)
    a = evaluate_samples(tiny_runs["full"], rows=["semantic"], **kwargs)
    b = evaluate_samples(tiny_runs["full"], rows=["semantic", "two_stage"], **kwargs)
    assert list(a["rows"]) == ["semantic"]
    assert list(b["rows"]) == ["two_stage", "semantic"]
    # Same seed: the same semantic images, whatever else is computed.
    assert a["rows"]["semantic"]["fd"] == b["rows"]["semantic"]["fd"]
    assert a["rows"]["semantic"]["class_histogram"] == b["rows"]["semantic"]["class_histogram"]


def test_eval_samples_unknown_row_is_a_user_error(tiny_runs, classifier_cache, capsys):
    code = main(["eval-samples", "--checkpoint", str(tiny_runs["full"]), "--n", "4",
                 "--rows", "bogus", "--classifier-cache", str(classifier_cache),
                 "--device", "cpu"])
    assert code == 2
    assert "unknown rows" in capsys.readouterr().err


def test_rgb_model_runs_both_evaluations(tmp_path, classifier_cache):
    """3-channel models (CIFAR-like) go through the same code: OOD sets come out in RGB and
    the classifier is trained on the RGB train split."""
    from model.evaluation import evaluate_ood, evaluate_samples

    config = preset("tiny").replace(network={"channels": 3},
                                    training={"iterations": 0, "warmup_steps": 1})
    run = run_training(config, tmp_path / "rgb", device="cpu")
    ood = evaluate_ood(run, per_set=4, device="cpu")
    _check_ood_shape(ood, {"knn_pixel"})
    from model.classifier import ClassifierSettings

    samples = evaluate_samples(run, n=4, rows=["real", "two_stage"], device="cpu",
                               classifier_cache=classifier_cache,
                               classifier_settings=ClassifierSettings(epochs=2))
    assert samples["classifier"]["settings"]["epochs"] == 2
    assert samples["classifier_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert set(samples["rows"]) == {"real", "two_stage"}


def test_eval_samples_n_below_two_is_a_user_error(tiny_runs, capsys):
    code = main(["eval-samples", "--checkpoint", str(tiny_runs["full"]), "--n", "1",
                 "--device", "cpu"])
    assert code == 2
    assert "n must be >= 2" in capsys.readouterr().err
