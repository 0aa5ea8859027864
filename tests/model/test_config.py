"""Configuration: validation and overrides fail fast with the offending name."""

from __future__ import annotations

import pytest

from model.formats.config import ConfigError, ExperimentConfig
from model.formats.presets import preset


def test_replace_overrides_and_validates():
    config = preset("tiny").replace(training={"iterations": 7}, data={"dataset": "x.npz"})
    assert config.training.iterations == 7 and config.data.dataset == "x.npz"
    assert preset("tiny").training.iterations != 7  # presets are not mutated


@pytest.mark.parametrize("sections, message", [
    ({"training": {"nope": 1}}, "unknown setting training.nope"),
    ({"bogus": {}}, "unknown config section"),
    ({"training": {"lr": -1.0}}, "lr must be a positive"),
    ({"training": {"lr": float("nan")}}, "lr must be a positive"),
    ({"training": {"iterations": 1.5}}, "must be an integer"),
    ({"training": {"iterations": float("inf")}}, "must be an integer"),
    ({"sampler": {"steps_latent": float("nan")}}, "must be an integer"),
    ({"network": {"channels": 2}}, "channels must be 1 or 3"),
    ({"network": {"image_size": 9}}, "must be divisible"),
    ({"sampler": {"steps_pixel": -1}}, "steps_pixel must be >= 0"),
])
def test_bad_values_are_refused_with_their_name(sections, message):
    with pytest.raises(ConfigError, match=message):
        preset("tiny").replace(**sections)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")


def test_from_dict_rejects_unknown_keys():
    data = ExperimentConfig().to_dict()
    data["network"]["extra"] = 1
    with pytest.raises(ConfigError, match="unknown settings"):
        ExperimentConfig.from_dict(data)


def test_semantic_contrastive_lr_round_trips_and_is_validated():
    from model.formats.config import ConfigError, ExperimentConfig
    from model.formats.presets import preset

    for name in ("tiny", "demo", "paper"):
        assert preset(name).training.semantic_contrastive_lr is None
    config = preset("demo").replace(training={"semantic_contrastive_lr": 2e-5})
    again = ExperimentConfig.from_dict(config.to_dict())
    assert again.training.semantic_contrastive_lr == 2e-5
    assert ExperimentConfig.from_dict(preset("demo").to_dict()).training \
        .semantic_contrastive_lr is None
    for bad in (0.0, -1e-5, float("inf")):
        with pytest.raises(ConfigError, match="semantic_contrastive_lr"):
            preset("demo").replace(training={"semantic_contrastive_lr": bad})
