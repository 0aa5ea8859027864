"""The model on the test device (DEBM_TEST_DEVICE; cpu here, cuda in benchmarks/gpu_check.py):
every random draw on that device, seeds reproduce, results finite, bf16 autocast works."""

from __future__ import annotations

import pytest
import torch

from model.formats.config import NoiseConfig, SamplerConfig
from model.energies import texture_score
from model.networks import DenoisingEBM
from model.samplers import SAMPLERS, sample
from model.training import Trainer

from .conftest import tiny_network, toy_dataset
from .test_presets import paper_toy_config
from .test_training import toy_config


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_samplers_on_device(device, name, precision):
    torch.manual_seed(0)
    model = DenoisingEBM(tiny_network(channels=3)).to(device).eval()
    settings = SamplerConfig(steps_latent=2, steps_pixel=2, annealed_levels=3,
                             annealed_steps_per_level=1, precision=precision)
    noise = NoiseConfig(num_sigmas=8)
    first = sample(model, sampler=name, n=3, seed=1, settings=settings, noise=noise)
    again = sample(model, sampler=name, n=3, seed=1, settings=settings, noise=noise)
    assert first.images.device.type == device.type
    assert first.images.dtype == torch.float32
    assert torch.isfinite(first.images).all()
    assert torch.equal(first.images, again.images)


@pytest.mark.parametrize("make", [paper_toy_config, toy_config], ids=["paper", "stabilised"])
def test_training_steps_on_device(device, make):
    config = make()
    runs = []
    for _ in range(2):
        trainer = Trainer(config, toy_dataset(), device=device)
        metrics = [trainer.train_step() for _ in range(3)]
        assert all(torch.isfinite(torch.tensor(list(m.losses.values()))).all()
                   for m in metrics)
        assert trainer.generator.device.type == device.type
        runs.append([p.detach().clone() for p in trainer.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_scores_on_device_are_deterministic(device):
    torch.manual_seed(0)
    model = DenoisingEBM(tiny_network()).to(device).eval()
    x = torch.rand((5, 1, 8, 8), generator=torch.Generator(device=device).manual_seed(0),
                   device=device) * 2 - 1
    a = texture_score(model.dae, x, sigma=0.05, draws=3, seed=0)
    b = texture_score(model.dae, x[2:3], sigma=0.05, draws=3, seed=0)
    assert a.device.type == device.type and torch.isfinite(a).all()
    assert torch.allclose(a[2:3], b, rtol=1e-5)


def test_bf16_training_steps_are_finite(device):
    config = paper_toy_config(precision="bfloat16")
    trainer = Trainer(config, toy_dataset(), device=device)
    metrics = [trainer.train_step() for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(list(m.losses.values()))).all() for m in metrics)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
