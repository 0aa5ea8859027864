"""The OOD score a checkpoint answers with, from its texture and semantic readings.

``ScoringConfig.score`` picks it:
- ``"texture"``: -U^c(x, sigma), the paper's score (5.2).
- ``"texture+semantic"``: the smaller of two standardised readings, -U^c(x, sigma) and
  -U^h(x, semantic_sigma) (``model.energies.semantic_reconstruction_energy``).  Each reading
  is standardised by its mean and standard deviation over training images (never the
  held-out split, which calibration and evaluation use), so the two are in one unit.

Why the minimum: U^c catches what has the wrong texture (noise, photos, a blank canvas, a
shifted or blurred digit) and misses what has the right strokes in the wrong shape (a
mirrored or rotated digit); U^h is the other way round: it reconstructs a blank canvas
perfectly.  The minimum makes an image as in-distribution as its worse reading, so neither
reading dilutes the other's alarm, as an average would (measured: docs/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import torch

READINGS = ("texture", "semantic")
REFERENCE_IMAGES = 1000  # training images the standardisation is measured on


def reference_statistics(readings: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Mean and standard deviation of each reading (training images, one row each)."""
    stats: dict[str, Any] = {}
    for name in READINGS:
        values = readings[name].double()
        if values.numel() < 2:
            raise ValueError("the score reference needs at least two training images")
        std = float(values.std())
        stats[name] = {"mean": float(values.mean()), "std": std if std > 0 else 1.0}
    stats["count"] = int(readings["texture"].numel())
    return stats


def combined_score(readings: dict[str, torch.Tensor], reference: dict[str, Any]
                   ) -> torch.Tensor:
    """min over the readings of (reading - mean) / std: higher = more in-distribution."""
    standardised = [(readings[name].double() - reference[name]["mean"]) / reference[name]["std"]
                    for name in READINGS]
    return torch.minimum(*standardised).to(readings["texture"].dtype)
