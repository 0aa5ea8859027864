"""Each config setting is declared once (model/formats/settingspec.py); docs/CONFIG.md is
generated from the declarations and must be current."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.formats.config import SECTIONS, ConfigError, SamplerConfig, TrainingConfig
from model.formats.settingspec import settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_docs_config_table_is_generated_from_the_declarations():
    assert (ROOT / "docs" / "CONFIG.md").read_text() == settings_table(SECTIONS), (
        "docs/CONFIG.md is stale: python -m model.formats.config > docs/CONFIG.md")


@pytest.mark.parametrize("section, values, words", [
    (TrainingConfig, {"replay_prob": 1.5}, "training.replay_prob must lie in [0, 1]"),
    (TrainingConfig, {"betas": (0.9,)}, "betas must have 2 items"),
    (TrainingConfig, {"negative_augmentations": ("melt",)}, "unknown training.negative_augmentations"),
    (TrainingConfig, {"flip": 1}, "flip must be true or false"),
    (SamplerConfig, {"precision": "float16"}, "precision must be one of"),
    (SamplerConfig, {"steps_pixel": 2.0}, "sampler.steps_pixel must be an integer"),
])
def test_validate_refuses_a_value_outside_its_declaration(section, values, words):
    with pytest.raises(ConfigError) as caught:
        section(**values).validate()
    assert words in str(caught.value)


def test_the_paper_fields_of_issue_27_are_declared_with_their_defaults():
    assert TrainingConfig().decoder_trains_encoder is True
    from model.formats.config import NetworkConfig

    assert NetworkConfig().preconditioning == "edm"
    with pytest.raises(ConfigError, match="preconditioning"):
        NetworkConfig(preconditioning="karras").validate()
