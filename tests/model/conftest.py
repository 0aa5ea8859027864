"""Shared fixtures for model tests: tiny networks and toy data that run in seconds."""

from __future__ import annotations

import os

import pytest
import torch

from model.data import ImageDataset
from model.formats.config import NetworkConfig
from model.formats.presets import preset
from model.networks import DenoisingEBM


def tiny_network(channels: int = 1, image_size: int = 8) -> NetworkConfig:
    return NetworkConfig(image_size=image_size, channels=channels, base_width=8,
                         channel_mults=(1, 2), latent_dim=6, decoder_width=8, embedding_dim=8,
                         groups=4)


def toy_dataset(n: int = 64, *, channels: int = 1, image_size: int = 8, seed: int = 0
                ) -> ImageDataset:
    """Bright vertical bars on a dark background at random columns: a simple, structured
    distribution that is easy to tell apart from noise or flat images."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros((n, channels, image_size, image_size), dtype=torch.uint8)
    columns = torch.randint(1, image_size - 2, (n,), generator=generator)
    for i, col in enumerate(columns.tolist()):
        images[i, :, 1:-1, col:col + 2] = 255
    return ImageDataset(images, torch.zeros(n, dtype=torch.long), "toy")


@pytest.fixture
def tiny_model() -> DenoisingEBM:
    torch.manual_seed(0)
    return DenoisingEBM(tiny_network()).eval()


@pytest.fixture
def tiny_config():
    return preset("tiny")


@pytest.fixture
def device() -> torch.device:
    """The device that device-aware tests run on: DEBM_TEST_DEVICE (e.g. cuda), default cpu.
    benchmarks/gpu_check.py runs tests/model with DEBM_TEST_DEVICE=cuda."""
    chosen = torch.device(os.environ.get("DEBM_TEST_DEVICE", "cpu"))
    if chosen.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("DEBM_TEST_DEVICE asks for CUDA, which is not available")  # asked for: not a skip
    return chosen
