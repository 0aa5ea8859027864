"""Tensor <-> image conversions: model inputs from decoded images, PNG grids from samples."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from .data import to_model_range, to_uint8
from .formats.imagefile import fit_to_model


def pil_to_model_tensor(images: list[Image.Image], *, image_size: int, channels: int
                        ) -> torch.Tensor:
    """Decoded L/RGB images of any size -> float (N, C, H, W) in [-1, 1] at the model size,
    through the colour conversion and resize every scoring path shares
    (``model.formats.imagefile.fit_to_model``)."""
    if not images:
        return torch.zeros((0, channels, image_size, image_size))
    return model_pixels_to_tensor([fit_to_model(image, image_size=image_size, channels=channels)
                                   for image in images])


def model_pixels_to_tensor(pixels: list[np.ndarray]) -> torch.Tensor:
    """uint8 (C, S, S) arrays from ``model.formats.imagefile.model_pixels`` -> float
    (N, C, S, S) in [-1, 1]."""
    return to_model_range(torch.from_numpy(np.stack(pixels)))


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = to_uint8(image.detach().cpu()).numpy()
    if array.shape[0] == 1:
        return Image.fromarray(array[0], mode="L")
    return Image.fromarray(array.transpose(1, 2, 0), mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Fixed options and no metadata so that equal pixels give byte-identical files.
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def grid_image(images: torch.Tensor, *, columns: int | None = None, padding: int = 2
               ) -> Image.Image:
    """Tile (N, C, H, W) images in [-1, 1] into one image (near-square by default)."""
    n, c, h, w = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    canvas = torch.full((c, rows * (h + padding) + padding, columns * (w + padding) + padding),
                        -1.0)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[:, top:top + h, left:left + w] = images[i].detach().cpu().clamp(-1, 1)
    return _to_pil(canvas)


def grid_png(images: torch.Tensor, **kwargs) -> bytes:
    return png_bytes(grid_image(images, **kwargs))


def sample_pngs(images: torch.Tensor) -> list[bytes]:
    return [png_bytes(_to_pil(image)) for image in images]
