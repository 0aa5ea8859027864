"""The OOD score a checkpoint answers with, from its texture and semantic readings.

``ScoringConfig.score`` picks it:
- ``"texture"``: -U^c(x, sigma), the paper's score (5.2).
- ``"texture+semantic"``: the smaller of two standardised features of the energies
  U^c(x, sigma) and U^h(x, semantic_sigma) (``model.energies.semantic_reconstruction_energy``):

      texture feature   t(x) = -log U^c(x)
      semantic feature  s(x) = -log (U^h(x) / U^c(x))
      score(x)          = min( (t - mean_t) / std_t, (s - mean_s) / std_s )

  with each mean and standard deviation measured on training images (never the held-out
  split, which calibration and evaluation use), so the two features are in one unit.

Why the minimum: U^c catches what has the wrong texture (noise, photos, a blank canvas, a
shifted or blurred digit) and misses what has the right strokes in the wrong shape (a
mirrored or rotated digit); U^h is the other way round: it reconstructs a blank canvas
perfectly.  The minimum makes an image as in-distribution as its worse feature, so neither
dilutes the other's alarm, as an average would (measured: docs/RESULTS.md, "Demo model v3").

Why logs: both energies are positive and right-skewed, and a mean and standard deviation
describe their logs far better than the raw values, whose tails set the scale.

Why U^h relative to U^c: U^h grows with how much an image holds to reconstruct (an 8 has
more strokes than a 1), and U^c measures that same local complexity.  The ratio asks whether
the latent explains the image worse than its complexity predicts, the input-complexity
correction of Serra et al. (ICLR 2020).  Without it, the raw U^h flagged 15% of held-out 8s
at a threshold that flags 5% of all digits; with it, at most 12% of any class.
"""

from __future__ import annotations

from typing import Any

import torch

READINGS = ("texture", "semantic")
FEATURE_FORM = "-log Uc, -log(Uh/Uc)"  # stored in a reference: which features it describes
REFERENCE_IMAGES = 1000  # training images the standardisation is measured on
_SMALLEST_ENERGY = 1e-12  # a perfect reconstruction would otherwise give log 0


def score_features(readings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The features of the module docstring from the readings -U^c and -U^h (float64);
    higher = more in-distribution, as for the readings."""
    log_texture = (-readings["texture"].double()).clamp_min(_SMALLEST_ENERGY).log()
    log_semantic = (-readings["semantic"].double()).clamp_min(_SMALLEST_ENERGY).log()
    return {"texture": -log_texture, "semantic": -(log_semantic - log_texture)}


def reference_statistics(readings: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Mean and standard deviation of each feature over training images (one row each)."""
    features = score_features(readings)
    stats: dict[str, Any] = {"form": FEATURE_FORM}
    for name in READINGS:
        values = features[name]
        if values.numel() < 2:
            raise ValueError("the score reference needs at least two training images")
        std = float(values.std())
        stats[name] = {"mean": float(values.mean()), "std": std if std > 0 else 1.0}
    stats["count"] = int(readings["texture"].numel())
    return stats


def combined_score(readings: dict[str, torch.Tensor], reference: dict[str, Any]
                   ) -> torch.Tensor:
    """min over the features of (feature - mean) / std: higher = more in-distribution."""
    features = score_features(readings)
    standardised = [(features[name] - reference[name]["mean"]) / reference[name]["std"]
                    for name in READINGS]
    return torch.minimum(*standardised).to(readings["texture"].dtype)
