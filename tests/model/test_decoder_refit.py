"""A decoder refit (training.freeze_dae) trains the semantic decoder on eq. 13 and leaves the
DAE, and so every texture energy, exactly as it was."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.formats.config import ConfigError
from model.training import Trainer
from .conftest import toy_dataset


def test_decoder_refit_moves_only_the_decoder(tiny_config):
    config = dataclasses.replace(tiny_config, training=dataclasses.replace(
        tiny_config.training, freeze_dae=True, iterations=0, warmup_steps=3, lr=1e-3))
    trainer = Trainer(config, toy_dataset())
    dae_before = {k: v.clone() for k, v in trainer.model.dae.state_dict().items()}
    dec_before = {k: v.clone() for k, v in trainer.model.decoder.state_dict().items()}
    metrics = [trainer.reconstruction_step() for _ in range(3)]
    assert all(torch.equal(v, trainer.model.dae.state_dict()[k]) for k, v in dae_before.items())
    assert any(not torch.equal(v, trainer.model.decoder.state_dict()[k])
               for k, v in dec_before.items())
    assert all(m["decoder"] > 0 and m["dae"] > 0 for m in metrics)


def test_decoder_refit_refuses_a_contrastive_phase(tiny_config):
    training = dataclasses.replace(tiny_config.training, freeze_dae=True, iterations=2)
    with pytest.raises(ConfigError, match="freeze_dae"):
        training.validate()
