"""Energies (eqs. 7, 8) and their gradients against finite differences, in float64."""

from __future__ import annotations

import torch

from model.energies import (reconstruction_losses, semantic_energy,
                            semantic_energy_grad, sigma_grid, texture_energy,
                            texture_energy_grad, texture_score)
from model.formats.config import NoiseConfig
from model.networks import DenoisingEBM

from .conftest import tiny_network


def _double_model() -> DenoisingEBM:
    torch.manual_seed(1)
    return DenoisingEBM(tiny_network()).double().eval()


def _finite_difference(fn, x: torch.Tensor, directions: int = 4, eps: float = 1e-6):
    """Directional derivatives (f(x + eps v) - f(x - eps v)) / 2 eps for random v."""
    generator = torch.Generator().manual_seed(3)
    out = []
    for _ in range(directions):
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        out.append((v, (fn(x + eps * v).sum() - fn(x - eps * v).sum()) / (2 * eps)))
    return out


def test_texture_energy_matches_equation_7():
    model = _double_model()
    x = torch.rand((3, 1, 8, 8), dtype=torch.float64) * 2 - 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    sigma = 0.1
    expected = ((x - model.dae(x + sigma * noise, torch.full((3,), sigma, dtype=x.dtype)))
                .flatten(1).pow(2).sum(1) / (2 * sigma ** 2))
    torch.testing.assert_close(texture_energy(model.dae, x, sigma, noise=noise), expected)


def test_texture_gradient_matches_finite_differences():
    model = _double_model()
    x = torch.rand((2, 1, 8, 8), dtype=torch.float64) * 2 - 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    sigma = torch.tensor([0.05, 0.3], dtype=torch.float64)
    energy, grad = texture_energy_grad(model.dae, x, sigma, noise=noise)
    assert energy.shape == (2,) and grad.shape == x.shape
    for v, numeric in _finite_difference(
            lambda v_: texture_energy(model.dae, v_, sigma, noise=noise), x):
        torch.testing.assert_close((grad * v).sum(), numeric, rtol=1e-5, atol=1e-7)


def test_semantic_gradient_matches_finite_differences():
    model = _double_model()
    z = torch.randn((3, 6), dtype=torch.float64)
    noise = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(2),
                        dtype=torch.float64)
    energy, grad = semantic_energy_grad(model.dae, model.decoder, z, 0.1, noise=noise)
    torch.testing.assert_close(
        energy, semantic_energy(model.dae, model.decoder, z, 0.1, noise=noise))
    for v, numeric in _finite_difference(
            lambda v_: semantic_energy(model.dae, model.decoder, v_, 0.1, noise=noise), z):
        torch.testing.assert_close((grad * v).sum(), numeric, rtol=1e-5, atol=1e-7)


def test_batched_gradient_equals_per_sample_gradient():
    model = _double_model()
    x = torch.rand((3, 1, 8, 8), dtype=torch.float64)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    _, batched = texture_energy_grad(model.dae, x, 0.05, noise=noise)
    for i in range(3):
        _, single = texture_energy_grad(model.dae, x[i:i + 1], 0.05, noise=noise[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], single)


def test_sigma_grid_is_geometric_from_max_to_min():
    grid = sigma_grid(NoiseConfig(num_sigmas=128, sigma_max=1.0, sigma_min=0.01),
                      dtype=torch.float64)
    assert grid.shape == (128,)
    torch.testing.assert_close(grid[0], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(grid[-1], torch.tensor(0.01, dtype=torch.float64))
    ratios = grid[1:] / grid[:-1]
    torch.testing.assert_close(ratios, ratios[0].expand_as(ratios))


def test_score_is_deterministic_and_independent_of_batch_company():
    torch.manual_seed(0)
    model = DenoisingEBM(tiny_network()).eval()
    x = torch.rand((5, 1, 8, 8)) * 2 - 1
    first = texture_score(model.dae, x, sigma=0.05, draws=3, seed=7)
    again = texture_score(model.dae, x, sigma=0.05, draws=3, seed=7)
    alone = texture_score(model.dae, x[2:3], sigma=0.05, draws=3, seed=7)
    other_seed = texture_score(model.dae, x, sigma=0.05, draws=3, seed=8)
    assert torch.equal(first, again)
    torch.testing.assert_close(alone, first[2:3], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, other_seed)
    assert (first <= 0).all()  # score is minus a non-negative energy


def test_reconstruction_losses_are_finite_and_reach_the_encoder():
    torch.manual_seed(0)
    model = DenoisingEBM(tiny_network())
    x = torch.rand((4, 1, 8, 8)) * 2 - 1
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0])
    loss_dae, loss_dec, z = reconstruction_losses(model.dae, model.decoder, x, sigma,
                                                  generator=torch.Generator().manual_seed(0))
    assert z.shape == (4, 6)
    loss_dec.backward()
    encoder_grad = model.dae.stem.weight.grad
    assert torch.isfinite(loss_dae) and encoder_grad is not None and encoder_grad.abs().sum() > 0
