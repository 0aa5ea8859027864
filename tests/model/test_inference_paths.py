"""Serving preparation: the traced scoring denoiser gives the eager model's scores bit for
bit at every batch size, and can be turned off."""

from __future__ import annotations

import pytest
import torch

from model.checkpoints import load_checkpoint
from model.pipeline import InferenceOptions, prepare_for_inference, score_images


@pytest.mark.parametrize("n", [1, 3, 8, 13])
def test_traced_scores_equal_eager_scores_exactly(tiny_checkpoint, n):
    eager = load_checkpoint(tiny_checkpoint)
    traced = prepare_for_inference(load_checkpoint(tiny_checkpoint))
    assert traced.scoring_chunks is not None
    size = eager.config.network.image_size
    images = torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(n)) * 2 - 1
    assert torch.equal(score_images(eager, images), score_images(traced, images))


def test_tracing_can_be_turned_off_and_sampling_stays_eager(tiny_checkpoint):
    off = prepare_for_inference(load_checkpoint(tiny_checkpoint),
                                InferenceOptions(trace_scoring=False))
    assert off.scoring_chunks is None
    on = prepare_for_inference(load_checkpoint(tiny_checkpoint))
    assert isinstance(on.model.dae, torch.nn.Module) and on.scoring_chunks is not None


@pytest.mark.parametrize(("sigma", "draws"), [(0.05, 1), (0.3, 8), (1.0, 3)])
def test_one_trace_serves_every_sigma_and_draw_count(tiny_checkpoint, sigma, draws):
    eager = load_checkpoint(tiny_checkpoint)
    traced = prepare_for_inference(load_checkpoint(tiny_checkpoint))
    size = eager.config.network.image_size
    images = torch.rand((5, 1, size, size), generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(score_images(eager, images, sigma=sigma, draws=draws),
                       score_images(traced, images, sigma=sigma, draws=draws))
