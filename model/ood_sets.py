"""Out-of-distribution image sets for ``debm eval-ood``, built offline and deterministically.

Every builder returns float images (N, C, H, W) in [-1, 1] at the model's size and channels.
Each set first exists as uint8 images (what a user could upload), then goes through
``data.conform`` (resize, grey <-> RGB) and ``data.to_model_range``: the same path real data
takes, so a set cannot be told apart from the in-distribution data by quantisation or by a
different resampling.

    uniform        U(-1, 1) per pixel.
    gaussian       N(0, 0.5^2) per pixel, clipped to [-1, 1] (about 5% of pixels clip).
    constant       flat images at levels drawn from U(-1, 1) (one level per channel); the
                   first max(3, N/10) members are the blank canvas -1, i.e. the MNIST
                   background, the case a plain DAE scores as *more* in-distribution.
    interpolation  (x_i + x_j) / 2 of two held-out images of different classes (JEM,
                   Grathwohl et al. 2020); random distinct pairs when the data has no labels.
    faces          the 100 face crops (25x25) of scikit-image's ``lfw_subset``; beyond 100
                   members they repeat, mirrored.
    photos         random square patches (side 1/8 to 1/2 of the shorter side) of the natural
                   photographs shipped with scikit-image, converted to grey for grey models.
    digits8x8      scikit-learn's 8x8 digits, upscaled (antialiased bilinear).

``build_ood_set(name, n=..., seed=...)`` is the entry point; each set draws from its own
``torch.Generator`` seeded with ``seed``, so a set does not change when another is added.
"""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np
import torch

from .data import ImageDataset, conform, load_digits8x8, to_model_range, to_uint8

# Natural photographs bundled inside scikit-image (no download; checked on 0.21-0.26).
PHOTO_NAMES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "grass", "gravel",
               "brick", "moon")
LFW_FACES = 100  # lfw_subset: the first 100 of its 200 crops are faces, the rest non-faces


class OODBuilder(Protocol):
    def __call__(self, n: int, *, image_size: int, channels: int,
                 generator: torch.Generator, holdout: ImageDataset | None) -> torch.Tensor: ...


def _finish(images: torch.Tensor | np.ndarray, *, image_size: int, channels: int
            ) -> torch.Tensor:
    """uint8 (N, C, H, W) at any size -> float model inputs."""
    return to_model_range(conform(images, image_size=image_size, channels=channels))


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8, so synthetic sets sit on the same 256-level grid as data."""
    return to_uint8(x)


def _choose(total: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n indices into range(total): a permutation, cycled when n > total.  Also returns which
    pass each index belongs to (0 for the first), so repeats can be varied (e.g. mirrored)."""
    passes = -(-n // total)
    order = torch.cat([torch.randperm(total, generator=generator) for _ in range(passes)])[:n]
    return order, torch.arange(n) // total


# --- builders ------------------------------------------------------------------------------

def uniform(n: int, *, image_size: int, channels: int, generator: torch.Generator,
            holdout: ImageDataset | None = None) -> torch.Tensor:
    x = torch.rand((n, channels, image_size, image_size), generator=generator) * 2 - 1
    return _finish(_quantise(x), image_size=image_size, channels=channels)


def gaussian(n: int, *, image_size: int, channels: int, generator: torch.Generator,
             holdout: ImageDataset | None = None) -> torch.Tensor:
    x = 0.5 * torch.randn((n, channels, image_size, image_size), generator=generator)
    return _finish(_quantise(x.clamp(-1, 1)), image_size=image_size, channels=channels)


def blank_count(n: int) -> int:
    """How many members of the constant set are the blank canvas -1."""
    return min(n, max(3, n // 10))


def constant(n: int, *, image_size: int, channels: int, generator: torch.Generator,
             holdout: ImageDataset | None = None) -> torch.Tensor:
    levels = torch.rand((n, channels, 1, 1), generator=generator) * 2 - 1
    levels[:blank_count(n)] = -1.0
    x = levels.expand(n, channels, image_size, image_size)
    return _finish(_quantise(x), image_size=image_size, channels=channels)


def interpolation_pairs(labels: torch.Tensor | None, count: int, n: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n index pairs (i, j), i != j, with labels[i] != labels[j] when labels are given."""
    if count < 2:
        raise ValueError("interpolation needs at least two held-out images")
    first = torch.randint(count, (n,), generator=generator)
    second = torch.randint(count, (n,), generator=generator)
    if labels is not None and torch.unique(labels).numel() < 2:
        raise ValueError("interpolation needs held-out images of at least two classes")
    # Redraw the partners that clash; each round fixes most of them, so this ends quickly.
    for _ in range(1000):
        clash = first == second
        if labels is not None:
            clash |= labels[first] == labels[second]
        if not clash.any():
            return first, second
        second[clash] = torch.randint(count, (int(clash.sum()),), generator=generator)
    raise RuntimeError("could not draw distinct interpolation pairs")  # pragma: no cover


def interpolation(n: int, *, image_size: int, channels: int, generator: torch.Generator,
                  holdout: ImageDataset | None = None) -> torch.Tensor:
    if holdout is None:
        raise ValueError("the interpolation set needs the held-out split (holdout=...)")
    images = conform(holdout.images, image_size=image_size, channels=channels)
    first, second = interpolation_pairs(holdout.labels, len(holdout), n, generator)
    mean = (to_model_range(images[first]) + to_model_range(images[second])) / 2
    return to_model_range(_quantise(mean))


@functools.lru_cache(maxsize=1)
def _lfw_faces() -> np.ndarray:
    from skimage import data as skdata  # optional dependency (debm[data])

    crops = np.asarray(skdata.lfw_subset())[:LFW_FACES]
    if crops.dtype != np.uint8:  # float in [0, 1] in some scikit-image versions
        crops = np.clip(np.round(crops * 255.0), 0, 255).astype(np.uint8)
    return crops[:, None]  # (100, 1, 25, 25)


def faces(n: int, *, image_size: int, channels: int, generator: torch.Generator,
          holdout: ImageDataset | None = None) -> torch.Tensor:
    crops = torch.as_tensor(_lfw_faces())
    index, repeat = _choose(crops.shape[0], n, generator)
    chosen = crops[index]
    mirrored = (repeat % 2 == 1)[:, None, None, None]
    chosen = torch.where(mirrored, chosen.flip(-1), chosen)
    return _finish(chosen, image_size=image_size, channels=channels)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from skimage import data as skdata

    out = []
    for name in PHOTO_NAMES:
        image = np.asarray(getattr(skdata, name)())
        image = image[None] if image.ndim == 2 else image[..., :3].transpose(2, 0, 1)
        out.append(np.ascontiguousarray(image.astype(np.uint8)))
    return tuple(out)  # each (C, H, W) uint8, C in {1, 3}


def photos(n: int, *, image_size: int, channels: int, generator: torch.Generator,
           holdout: ImageDataset | None = None) -> torch.Tensor:
    sources = _photos()
    which = torch.randint(len(sources), (n,), generator=generator)
    fractions = torch.rand((n, 3), generator=generator)
    out = []
    for k in range(n):
        image = sources[int(which[k])]
        h, w = image.shape[1:]
        short = min(h, w)
        side = int(round(short / 8 + (short / 2 - short / 8) * float(fractions[k, 0])))
        top = int(float(fractions[k, 1]) * (h - side))
        left = int(float(fractions[k, 2]) * (w - side))
        patch = image[None, :, top:top + side, left:left + side]
        out.append(_finish(patch, image_size=image_size, channels=channels))
    return torch.cat(out) if out else torch.zeros((0, channels, image_size, image_size))


def digits8x8(n: int, *, image_size: int, channels: int, generator: torch.Generator,
              holdout: ImageDataset | None = None) -> torch.Tensor:
    images, _ = load_digits8x8()
    index, _ = _choose(images.shape[0], n, generator)
    return _finish(images[index.numpy()], image_size=image_size, channels=channels)


OOD_BUILDERS: dict[str, OODBuilder] = {
    "uniform": uniform,
    "gaussian": gaussian,
    "constant": constant,
    "interpolation": interpolation,
    "faces": faces,
    "photos": photos,
    "digits8x8": digits8x8,
}
OOD_SETS: tuple[str, ...] = tuple(OOD_BUILDERS)


def build_ood_set(name: str, *, n: int, image_size: int, channels: int, seed: int,
                  holdout: ImageDataset | None = None) -> torch.Tensor:
    """n images of the named set; the same (name, n, size, channels, seed, holdout) gives the
    same tensor."""
    try:
        builder = OOD_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown OOD set {name!r}; choose one of {list(OOD_SETS)}") from None
    if n < 1:
        raise ValueError("n must be >= 1")
    generator = torch.Generator().manual_seed(int(seed))
    x = builder(n, image_size=image_size, channels=channels, generator=generator,
                holdout=holdout)
    assert x.shape == (n, channels, image_size, image_size), (name, x.shape)
    return x


def dataset_ood_set(spec: str, *, n: int, image_size: int, channels: int, seed: int
                    ) -> torch.Tensor:
    """Up to n images of any dataset spec load_dataset reads (a CIFAR-10 / CIFAR-100 folder,
    an SVHN .mat, an image folder, .zip or .npz), conformed to the model's size, chosen with
    ``seed``: the paper's Table 4 sets (SVHN, CIFAR-100, CelebA) from the user's own copies."""
    from .data import load_dataset

    dataset = load_dataset(spec, image_size=image_size, channels=channels)
    generator = torch.Generator().manual_seed(int(seed))
    count = min(n, len(dataset))
    index = torch.randperm(len(dataset), generator=generator)[:count]
    return to_model_range(dataset.images[index])
