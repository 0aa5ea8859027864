"""Negative data augmentation: starting points for pixel chains made from real data.

Short-run chains on a CPU budget do not reach every spurious low-energy mode of U^c.  The
known blind spot of reconstruction-error scores is the nearly empty image: a DAE denoises a
blank canvas perfectly, so U^c(blank) is lower than U^c of any digit, and in our measurements
neither fresh nor persistent chains got there within a few hundred iterations (docs/RESULTS.md).
Negative data augmentation (Sinha et al., ICLR 2021) supplies such points directly: transforms
that keep local image statistics but destroy the global structure the data always has.  They
only seed pixel chains; the chains and the contrastive update are unchanged.

    erase    cutout / random erasing (DeVries & Taylor 2017; Zhong et al. 2020) of a large box,
             40-100% of the area, filled with the image's border colour
    jigsaw   the image cut into a 2x2 or 4x4 grid of tiles, tiles permuted
    rotate   rotation by 90, 180 or 270 degrees (wrong for rotation-invariant data sets)
"""

from __future__ import annotations

from typing import Callable

import torch

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _border_colour(x: torch.Tensor) -> torch.Tensor:
    edges = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    return edges.mean(dim=-1)[..., None, None]  # (C, 1, 1) per image


def erase(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    out = x.clone()
    size = x.shape[-1]
    for i in range(x.shape[0]):
        area = 0.4 + 0.6 * float(torch.rand((), generator=generator))
        aspect = float(torch.empty(()).uniform_(0.5, 2.0, generator=generator))
        h = max(1, min(size, round((area * size * size * aspect) ** 0.5)))
        w = max(1, min(size, round((area * size * size / aspect) ** 0.5)))
        top = int(torch.randint(size - h + 1, (), generator=generator))
        left = int(torch.randint(size - w + 1, (), generator=generator))
        out[i, :, top:top + h, left:left + w] = _border_colour(x[i])
    return out


def jigsaw(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    out = x.clone()
    size = x.shape[-1]
    grids = [g for g in (2, 4) if size % g == 0] or [1]
    for i in range(x.shape[0]):
        g = grids[int(torch.randint(len(grids), (), generator=generator))]
        if g == 1:
            continue
        t = size // g
        tiles = x[i].unfold(1, t, t).unfold(2, t, t)  # (C, g, g, t, t)
        tiles = tiles.reshape(x.shape[1], g * g, t, t)
        order = torch.randperm(g * g, generator=generator)
        while torch.equal(order, torch.arange(g * g)):
            order = torch.randperm(g * g, generator=generator)
        tiles = tiles[:, order].reshape(x.shape[1], g, g, t, t)
        out[i] = tiles.permute(0, 1, 3, 2, 4).reshape(x.shape[1], size, size)
    return out


def rotate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    turns = torch.randint(1, 4, (x.shape[0],), generator=generator)
    return torch.stack([torch.rot90(img, int(k), dims=(-2, -1)) for img, k in zip(x, turns)])


AUGMENTATIONS: dict[str, Augmentation] = {"erase": erase, "jigsaw": jigsaw, "rotate": rotate}


def negative_augment(x: torch.Tensor, kinds: tuple[str, ...], *,
                     generator: torch.Generator) -> torch.Tensor:
    """Apply one randomly chosen augmentation from ``kinds`` to each image."""
    if not kinds or x.shape[0] == 0:
        return x
    unknown = [k for k in kinds if k not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown negative augmentations {unknown}; "
                         f"choose from {sorted(AUGMENTATIONS)}")
    choice = torch.randint(len(kinds), (x.shape[0],), generator=generator)
    out = x.clone()
    for index, kind in enumerate(kinds):
        mask = choice == index
        if mask.any():
            out[mask] = AUGMENTATIONS[kind](x[mask], generator)
    return out
