"""Algorithm 1: signs of the contrastive update, exact resume, blow-up detection."""

from __future__ import annotations

import pytest
import torch

from model.checkpoints import (load_checkpoint, load_training_state,
                               save_checkpoint)
from model.formats.config import (ExperimentConfig, NoiseConfig, ScoringConfig,
                                  TrainingConfig)
from model.formats.errors import Cancelled
from model.training import EnergyExplosion, StepMetrics, Trainer

from .conftest import tiny_network, toy_dataset


def toy_config(**training) -> ExperimentConfig:
    base = dict(batch_size=16, warmup_steps=3, iterations=3, recon_steps=1, lr=2e-3,
                contrastive_lr=2e-3, chain_batch_size=8, steps_latent=2, steps_pixel=2,
                replay_buffer_size=32, pixel_replay_size=16, pixel_replay_fraction=0.25,
                seed=0)
    base.update(training)
    return ExperimentConfig(network=tiny_network(), noise=NoiseConfig(num_sigmas=16),
                            training=TrainingConfig(**base), scoring=ScoringConfig(draws=2)
                            ).validate()


def _mean_energy(trainer: Trainer, x: torch.Tensor, seed: int) -> float:
    from model.energies import texture_energy

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return float(texture_energy(trainer.model.dae, x, 0.05, generator=generator).mean())


def test_contrastive_update_lowers_data_energy_relative_to_negatives():
    """The sign test: minimising U(data) - U(negatives) must open the gap in that direction.
    A flipped sign would close it."""
    config = toy_config(warmup_steps=0, energy_penalty=0.0, contrastive_lr=3e-3)
    trainer = Trainer(config, toy_dataset())
    data = toy_dataset(seed=1).images[:16].float() / 127.5 - 1
    negatives = torch.rand((8, 1, 8, 8), generator=torch.Generator().manual_seed(2)) * 2 - 1
    z_neg = torch.randn((8, 6), generator=torch.Generator().manual_seed(3))
    sigma_neg = torch.full((8,), 0.05)
    gap_before = _mean_energy(trainer, negatives, 0) - _mean_energy(trainer, data, 0)
    for _ in range(30):
        trainer.contrastive_step(negatives, z_neg, sigma_neg)
    gap_after = _mean_energy(trainer, negatives, 0) - _mean_energy(trainer, data, 0)
    assert gap_after > gap_before + 1.0
    assert _mean_energy(trainer, data, 0) < _mean_energy(trainer, negatives, 0)


def test_full_algorithm_ends_with_data_energy_below_negative_energy():
    config = toy_config(warmup_steps=40, iterations=15, steps_pixel=4)
    trainer = Trainer(config, toy_dataset())
    history: list[StepMetrics] = []
    trainer.run(on_step_end=history.append)
    assert [m.phase for m in history] == ["warmup"] * 40 + ["contrastive"] * 15
    assert all(m.step == i + 1 for i, m in enumerate(history))
    last = history[-5:]
    assert all(m.data_energy is not None and m.negative_energy is not None for m in last)
    mean_data = sum(m.data_energy for m in last) / 5
    mean_negative = sum(m.negative_energy for m in last) / 5
    assert mean_data < mean_negative


def test_progress_reports_the_documented_fields():
    trainer = Trainer(toy_config(warmup_steps=1, iterations=1), toy_dataset())
    history: list[StepMetrics] = []
    trainer.run(on_step_end=history.append)
    warm, contrastive = history
    assert warm.phase == "warmup" and {"dae", "decoder"} <= warm.losses.keys()
    assert contrastive.phase == "contrastive"
    assert {"contrastive_phi", "contrastive_gamma", "penalty", "semantic_penalty"} \
        <= contrastive.losses.keys()
    assert contrastive.total_steps == 2 and contrastive.seconds > 0


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_exact_resume_equals_uninterrupted_training(tmp_path):
    config = toy_config(warmup_steps=3, iterations=4)
    straight = Trainer(config, toy_dataset())
    straight.run()

    first = Trainer(config, toy_dataset())
    first.run(until_step=4)  # stops inside the contrastive phase
    save_checkpoint(tmp_path / "ck", model=first.model, config=config, step=first.step,
                    training_state=first.state_tensors())
    del first

    resumed = Trainer(config, toy_dataset())
    resumed.model.load_state_dict(load_checkpoint(tmp_path / "ck").model.state_dict())
    resumed.load_state_tensors(*load_training_state(tmp_path / "ck"))
    assert resumed.step == 4
    resumed.run()
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(straight.buffer, resumed.buffer)
    assert torch.equal(straight.pixel_buffer, resumed.pixel_buffer)


def test_energy_explosion_stops_with_a_clear_error():
    config = toy_config(warmup_steps=0, iterations=2, max_energy=1e-6)
    trainer = Trainer(config, toy_dataset())
    with pytest.raises(EnergyExplosion, match="diverged"):
        trainer.run()


def test_cancellation_between_steps():
    trainer = Trainer(toy_config(warmup_steps=5, iterations=0), toy_dataset())
    with pytest.raises(Cancelled):
        trainer.run(should_cancel=lambda: trainer.step >= 2)
    assert trainer.step == 2


def test_dataset_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="model expects"):
        Trainer(toy_config(), toy_dataset(image_size=16))
