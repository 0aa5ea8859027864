"""Negative data augmentation used to seed pixel chains."""

from __future__ import annotations

import pytest
import torch

from model.augment import (AUGMENTATIONS, erase, jigsaw, negative_augment,
                           rotate)
from model.formats.config import NEGATIVE_AUGMENTATIONS

from .conftest import toy_dataset


def _images(n: int = 8, size: int = 8) -> torch.Tensor:
    return toy_dataset(n, image_size=size).images.float() / 127.5 - 1


def test_torch_free_names_match_the_registry():
    assert tuple(sorted(NEGATIVE_AUGMENTATIONS)) == tuple(sorted(AUGMENTATIONS))


def test_erase_fills_a_large_box_with_the_border_colour():
    x = _images()
    out = erase(x, torch.Generator().manual_seed(0))
    background = (out == -1.0).flatten(1).float().mean(1)
    original = (x == -1.0).flatten(1).float().mean(1)
    assert out.shape == x.shape and (background >= original).all()
    assert (background > original).any()


def test_jigsaw_permutes_tiles_without_changing_pixel_counts():
    x = _images(size=8)
    out = jigsaw(x, torch.Generator().manual_seed(0))
    assert torch.equal(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert not torch.equal(out, x)


def test_rotate_turns_by_a_non_zero_multiple_of_90_degrees():
    x = _images(4)
    out = rotate(x, torch.Generator().manual_seed(0))
    for a, b in zip(x, out):
        assert any(torch.equal(torch.rot90(a, k, dims=(-2, -1)), b) for k in (1, 2, 3))


def test_negative_augment_is_seeded_and_validates_names():
    x = _images(16)
    a = negative_augment(x, ("erase", "jigsaw"), generator=torch.Generator().manual_seed(1))
    b = negative_augment(x, ("erase", "jigsaw"), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    with pytest.raises(ValueError, match="unknown negative augmentations"):
        negative_augment(x, ("melt",), generator=torch.Generator())
