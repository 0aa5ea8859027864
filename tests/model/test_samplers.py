"""Samplers: Langevin correctness on a known energy, and a contract run over the registry."""

from __future__ import annotations

import pytest
import torch

from model.formats.config import NoiseConfig, SamplerConfig
from model.formats.errors import Cancelled
from model.samplers import SAMPLERS, langevin_step, sample

SETTINGS = SamplerConfig(steps_latent=3, steps_pixel=4, annealed_levels=3,
                         annealed_steps_per_level=2)
NOISE = NoiseConfig()


def test_langevin_recovers_gaussian_mean_and_variance():
    """U(s) = (s - mu)^2 / (2 var): the chain's stationary law is N(mu, var)."""
    mu, var = torch.tensor([1.5, -2.0]), torch.tensor([0.25, 4.0])
    generator = torch.Generator().manual_seed(0)
    s = torch.zeros((4000, 2))
    for _ in range(1500):
        grad = (s - mu) / var
        s = langevin_step(s, grad, step_size=0.01, temperature=1.0, grad_clip=None,
                          generator=generator)
    torch.testing.assert_close(s.mean(0), mu, atol=0.12, rtol=0)
    # Unadjusted Langevin's bias on the variance is O(step / var): a few percent here.
    torch.testing.assert_close(s.var(0), var, rtol=0.08, atol=0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_contract(name, tiny_model):
    calls = []
    result = sample(tiny_model, sampler=name, n=3, seed=5, settings=SETTINGS, noise=NOISE,
                    on_progress=lambda stage, step, total: calls.append((stage, step, total)))
    assert result.images.shape == (3, 1, 8, 8)
    assert result.images.min() >= -1 and result.images.max() <= 1
    assert torch.isfinite(result.images).all()
    assert calls and calls[-1][1] == calls[-1][2] == result.steps
    again = sample(tiny_model, sampler=name, n=3, seed=5, settings=SETTINGS, noise=NOISE)
    assert torch.equal(result.images, again.images)
    other = sample(tiny_model, sampler=name, n=3, seed=6, settings=SETTINGS, noise=NOISE)
    assert not torch.equal(result.images, other.images)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_cancels_between_steps(name, tiny_model):
    seen = []

    def should_cancel():
        seen.append(1)
        return len(seen) > 2

    with pytest.raises(Cancelled):
        sample(tiny_model, sampler=name, n=2, seed=0, settings=SETTINGS, noise=NOISE,
               should_cancel=should_cancel)
    assert len(seen) == 3


def test_two_stage_returns_semantic_images_and_refines_them(tiny_model):
    result = sample(tiny_model, sampler="two_stage", n=2, seed=1, settings=SETTINGS,
                    noise=NOISE)
    assert result.semantic is not None and result.semantic.shape == result.images.shape
    assert result.steps == SETTINGS.steps_latent + SETTINGS.steps_pixel
    assert not torch.equal(result.semantic, result.images)


def test_three_channel_shapes():
    from model.networks import DenoisingEBM

    from .conftest import tiny_network

    torch.manual_seed(0)
    model = DenoisingEBM(tiny_network(channels=3, image_size=16)).eval()
    for name in SAMPLERS:
        out = sample(model, sampler=name, n=2, seed=0, settings=SETTINGS, noise=NOISE)
        assert out.images.shape == (2, 3, 16, 16)


def test_torch_free_sampler_names_match_the_registry():
    from model.formats.config import SAMPLER_NAMES

    assert tuple(sorted(SAMPLER_NAMES)) == tuple(sorted(SAMPLERS))


def test_unknown_sampler_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        sample(tiny_model, sampler="nope", n=1, seed=0, settings=SETTINGS, noise=NOISE)
