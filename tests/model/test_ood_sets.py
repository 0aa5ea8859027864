"""OOD set builders: shapes, ranges, determinism, and what each set is meant to contain."""

from __future__ import annotations

import pytest
import torch

from model.data import load_dataset, train_holdout_split
from model.ood_sets import (LFW_FACES, OOD_BUILDERS, OOD_SETS, blank_count, build_ood_set,
                            interpolation_pairs)


@pytest.fixture(scope="module")
def holdout8():
    dataset = load_dataset("mnist5k", image_size=8, channels=1)
    return train_holdout_split(dataset, holdout_fraction=0.1, seed=0)[1]


def test_registry_order_is_the_documented_one():
    assert OOD_SETS == ("uniform", "gaussian", "constant", "interpolation", "faces", "photos",
                        "digits8x8")
    assert set(OOD_BUILDERS) == set(OOD_SETS)


@pytest.mark.parametrize("name", OOD_SETS)
@pytest.mark.parametrize("size,channels", [(8, 1), (12, 3)])
def test_shape_range_and_determinism(name, size, channels, holdout8):
    kwargs = dict(n=24, image_size=size, channels=channels, holdout=holdout8)
    a = build_ood_set(name, seed=0, **kwargs)
    assert a.shape == (24, channels, size, size) and a.dtype == torch.float32
    assert a.min() >= -1.0 and a.max() <= 1.0 and torch.isfinite(a).all()
    assert torch.equal(a, build_ood_set(name, seed=0, **kwargs))
    assert not torch.equal(a, build_ood_set(name, seed=1, **kwargs))
    # Members differ from one another (not one image repeated), blanks aside.
    assert a.flatten(1).unique(dim=0).shape[0] > 12


def test_constant_contains_the_blank_canvas_and_flat_images():
    x = build_ood_set("constant", n=50, image_size=8, channels=1, seed=3)
    k = blank_count(50)
    assert k >= 3
    assert (x[:k] == -1.0).all()
    flat = x.flatten(1)
    assert (flat.max(1).values == flat.min(1).values).all()
    assert (flat[k:, 0] > -1.0).float().mean() > 0.9


def test_interpolation_pairs_have_different_labels(holdout8):
    generator = torch.Generator().manual_seed(0)
    first, second = interpolation_pairs(holdout8.labels, len(holdout8), 200, generator)
    assert (first != second).all()
    assert (holdout8.labels[first] != holdout8.labels[second]).all()


def test_interpolation_is_the_mean_of_two_images(holdout8):
    from model.data import to_model_range

    x = build_ood_set("interpolation", n=10, image_size=8, channels=1, seed=5,
                      holdout=holdout8)
    generator = torch.Generator().manual_seed(5)
    first, second = interpolation_pairs(holdout8.labels, len(holdout8), 10, generator)
    images = to_model_range(holdout8.images)
    expected = (images[first] + images[second]) / 2
    assert torch.allclose(x, expected, atol=1 / 127.5)  # one uint8 level of rounding


def test_interpolation_needs_the_holdout():
    with pytest.raises(ValueError, match="held-out"):
        build_ood_set("interpolation", n=4, image_size=8, channels=1, seed=0)


def test_faces_beyond_the_subset_repeat_mirrored():
    x = build_ood_set("faces", n=LFW_FACES + 20, image_size=8, channels=1, seed=0)
    first, second = x[:LFW_FACES], x[LFW_FACES:]
    # Every member of the second pass is the mirror image of a member of the first.
    for image in second:
        assert (first == image.flip(-1)).flatten(1).all(1).any()


def test_photos_are_grey_for_grey_models_and_colour_for_rgb():
    grey = build_ood_set("photos", n=16, image_size=8, channels=1, seed=0)
    rgb = build_ood_set("photos", n=16, image_size=8, channels=3, seed=0)
    assert grey.shape[1] == 1 and rgb.shape[1] == 3
    # Some photographs (astronaut, coffee, ...) are in colour.
    assert (rgb[:, 0] - rgb[:, 1]).abs().max() > 0.05


def test_unknown_set_and_bad_n():
    with pytest.raises(ValueError, match="unknown OOD set"):
        build_ood_set("svhn", n=4, image_size=8, channels=1, seed=0)
    with pytest.raises(ValueError):
        build_ood_set("uniform", n=0, image_size=8, channels=1, seed=0)
