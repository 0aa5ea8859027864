"""benchmarks/peer_ddpm.py: the diffusers DDPM peer's training and DDIM sampling, tiny sizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tests.model.conftest import toy_dataset

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_ddpm.py"
_spec = importlib.util.spec_from_file_location("peer_ddpm", _PATH)
peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer)

TINY = dict(widths=(8, 16), groups=4, batch_size=16, timesteps=50)


def _images() -> torch.Tensor:
    return toy_dataset(32).images.float() / 127.5 - 1


def test_training_stops_at_the_step_limit_and_the_budget():
    _, _, stats = peer.train_ddpm(_images(), budget_seconds=600, max_steps=3, seed=0, **TINY)
    assert stats["steps"] == 3 and stats["parameters"] > 0
    _, _, none = peer.train_ddpm(_images(), budget_seconds=0, seed=0, **TINY)
    assert none["steps"] == 0


def test_epsilon_loss_falls_on_toy_bars():
    """The epsilon loss of an untrained network is about 1 or more; 60 steps at a high rate
    must bring the mean of the last steps clearly below the first step's loss."""
    _, _, stats = peer.train_ddpm(_images(), budget_seconds=600, max_steps=60, lr=3e-3,
                                  seed=0, **TINY)
    assert stats["final_loss"] < 0.8 * stats["first_loss"]


def test_ddim_samples_are_seeded_bounded_and_batched_like_eval_samples():
    unet, scheduler, _ = peer.train_ddpm(_images(), budget_seconds=600, max_steps=2, seed=0,
                                         **TINY)
    a = peer.ddim_sample(unet, scheduler, n=4, steps=3, seed=5, image_shape=(1, 8, 8))
    b = peer.ddim_sample(unet, scheduler, n=4, steps=3, seed=5, image_shape=(1, 8, 8))
    c = peer.ddim_sample(unet, scheduler, n=4, steps=3, seed=6, image_shape=(1, 8, 8))
    assert a.shape == (4, 1, 8, 8) and torch.isfinite(a).all()
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    # n=70 is one batch of 64 with seed 5 and one of 6 with seed 6, as debm eval-samples does.
    images, seconds = peer.ddim_in_batches(unet, scheduler, n=70, steps=3, seed=5,
                                           image_shape=(1, 8, 8))
    assert images.shape[0] == 70 and seconds > 0
    assert torch.allclose(images[:4], a, atol=1e-4)
    assert torch.allclose(images[64:68], c, atol=1e-4)
