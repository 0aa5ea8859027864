"""Images of any size and channel count -> the model's size and channels (uint8, torch)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from .formats.archives import DatasetError


def conform(images: np.ndarray | torch.Tensor, *, image_size: int, channels: int
            ) -> torch.Tensor:
    """uint8 (N, C, H, W) with any C in {1, 3} and any size -> the model's C and size.

    Grey becomes RGB by repetition, RGB becomes grey by ITU-R 601 luma; sizes change by
    antialiased bilinear resampling (square images) or by resizing the longer side and
    padding the shorter with the border's mean (non-square)."""
    x = torch.as_tensor(np.ascontiguousarray(images))
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise DatasetError(f"expected uint8 images of shape (N, 1|3, H, W), got "
                           f"{tuple(x.shape)} {x.dtype}")
    if x.shape[1] != channels:
        if channels == 3:
            x = x.repeat(1, 3, 1, 1)
        else:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255).byte()
    h, w = x.shape[-2:]
    if (h, w) == (image_size, image_size):
        return x.contiguous()
    out = []
    for start in range(0, x.shape[0], 1024):
        chunk = x[start:start + 1024].float()
        scale = image_size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        chunk = F.interpolate(chunk, size=(new_h, new_w), mode="bilinear",
                              align_corners=False, antialias=True)
        if (new_h, new_w) != (image_size, image_size):
            fill = torch.cat([chunk[..., 0, :], chunk[..., -1, :]], dim=-1).mean(-1)
            canvas = fill[..., None, None].expand(-1, -1, image_size, image_size).clone()
            top, left = (image_size - new_h) // 2, (image_size - new_w) // 2
            canvas[..., top:top + new_h, left:left + new_w] = chunk
            chunk = canvas
        out.append(chunk.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
