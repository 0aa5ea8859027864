"""Evaluation metrics: OOD detection (AUROC, AUPR-in, FPR at 95% TPR) and the Frechet
distance between Gaussian fits of feature sets (the FID formula, with any feature extractor).

Conventions for OOD metrics: in-distribution is the positive class and a higher score means
"more in-distribution" (the OOD score is -U^c, paper 5.2).  scikit-learn computes the curves,
so ties between scores are handled the standard way (a tie between a positive and a negative
counts one half in AUROC).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import linalg
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

ArrayLike = Sequence[float] | np.ndarray


def _labelled(in_scores: ArrayLike, out_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) with in-distribution = 1; refuses empty or non-finite input, which
    would otherwise give a silent NaN (an exploded model scores NaN)."""
    a = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(out_scores, dtype=np.float64).reshape(-1)
    if a.size == 0 or b.size == 0:
        raise ValueError("OOD metrics need at least one in-distribution and one OOD score")
    scores = np.concatenate([a, b])
    if not np.isfinite(scores).all():
        raise ValueError("OOD metrics got NaN or infinite scores")
    labels = np.concatenate([np.ones(a.size), np.zeros(b.size)])
    return labels, scores


def auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Area under the ROC curve = P(score_in > score_out) + 0.5 P(tie)."""
    labels, scores = _labelled(in_scores, out_scores)
    return float(roc_auc_score(labels, scores))


def aupr_in(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Average precision with in-distribution as the positive class (AUPR-In of Hendrycks &
    Gimpel 2017).  Unlike AUROC it depends on the in/out ratio; report the set sizes."""
    labels, scores = _labelled(in_scores, out_scores)
    return float(average_precision_score(labels, scores))


def fpr_at_95_tpr(in_scores: ArrayLike, out_scores: ArrayLike, *, tpr: float = 0.95) -> float:
    """Share of OOD images accepted by the strictest threshold that still accepts at least
    ``tpr`` of the in-distribution images (accept = score >= threshold)."""
    labels, scores = _labelled(in_scores, out_scores)
    # drop_intermediate=False keeps every threshold, so the first point reaching the TPR is
    # the threshold a deployment would pick.
    fpr, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    index = int(np.searchsorted(tprs, tpr - 1e-12, side="left"))
    return float(fpr[min(index, fpr.size - 1)])


def ood_metrics(in_scores: ArrayLike, out_scores: ArrayLike) -> dict[str, float]:
    return {"auroc": auroc(in_scores, out_scores), "aupr_in": aupr_in(in_scores, out_scores),
            "fpr95": fpr_at_95_tpr(in_scores, out_scores)}


# --- Frechet distance ----------------------------------------------------------------------

def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray, *,
                     eps: float = 1e-6) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2))  (Dowson & Landau 1982; the FID
    formula of Heusel et al. 2017).

    Numerical handling as in the reference FID code: when sqrtm fails (a singular product,
    common with fewer samples than feature dimensions) eps * I is added to both covariances;
    the rounding-level imaginary part sqrtm may return is dropped, and a large one is an
    error.  A result below zero can only be rounding, so it is reported as 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2,
                                                                                      np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2,
                                                                                        np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size,) * 2:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                         f"cov {cov1.shape} vs {cov2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # sqrtm warns on singular input; finiteness is checked below instead.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov1 @ cov2)
        if not np.isfinite(covmean).all():
            offset = np.eye(cov1.shape[0]) * eps
            covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary component "
                             f"({np.max(np.abs(covmean.imag)):.3g}); the covariances are "
                             "not positive semi-definite")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
