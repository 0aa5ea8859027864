"""``debm eval-ood`` and ``debm eval-samples``: the numbers the service shows about itself.

eval-ood
    In-distribution: the held-out split of the checkpoint's dataset (``pipeline.load_splits``,
    fixed seed).  OOD: the sets of ``ood_sets`` (``per_set`` images each).  Score: -U^c(x,
    sigma) at the checkpoint's scoring sigma (0.05, paper 5.2), averaged over its fixed noise
    draws and seed (``pipeline.score_images``).  Side by side, with the same images:
      dae_only   the same score from the DAE after the reconstruction-only warm-up (the
                 checkpoint given as ``baseline_checkpoint``, else the one the checkpoint's
                 metadata records as ``warmup_checkpoint``; omitted, with a note, if neither);
      knn_pixel  minus the pixel-space L2 distance to the nearest training image.
    Besides the per-set metrics the report carries ``blank_canvas``: AUROC of the all -1 image
    alone (it is the constant set's first members), the known failure of autoencoder scores.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .checkpoints import MANIFEST, CheckpointError, LoadedCheckpoint, load_checkpoint
from .data import DatasetError, to_model_range
from .metrics import auroc, ood_metrics
from .ood_sets import OOD_SETS, blank_count, build_ood_set
from .pipeline import load_splits, resolve_device, score_images

ProgressFn = Callable[[str], None]


# --- OOD -----------------------------------------------------------------------------------

@torch.no_grad()
def knn_pixel_scores(queries: torch.Tensor, reference: torch.Tensor, *, query_chunk: int = 512,
                     reference_chunk: int = 2048) -> torch.Tensor:
    """-min_j ||x - t_j||_2 over the reference images, for each query x (float [-1, 1]).

    ``reference`` may be uint8 (converted chunk by chunk, so a 50k-image CIFAR train set never
    exists as floats at once).  Squared distances use ||x||^2 + ||t||^2 - 2 x.t (one matmul
    per chunk pair), clamped at 0 against rounding; float32 is ample for ranking."""
    device = queries.device
    best = torch.full((queries.shape[0],), math.inf, device=device)
    flat_q = queries.flatten(1).float()
    q_sq = flat_q.pow(2).sum(1)
    for r_start in range(0, reference.shape[0], reference_chunk):
        ref = reference[r_start:r_start + reference_chunk].to(device)
        ref = (to_model_range(ref) if ref.dtype == torch.uint8 else ref.float()).flatten(1)
        r_sq = ref.pow(2).sum(1)
        for q_start in range(0, flat_q.shape[0], query_chunk):
            q = flat_q[q_start:q_start + query_chunk]
            d2 = q_sq[q_start:q_start + query_chunk, None] + r_sq[None] - 2.0 * q @ ref.T
            chunk_best = d2.clamp_min(0).min(dim=1).values
            best[q_start:q_start + query_chunk] = torch.minimum(
                best[q_start:q_start + query_chunk], chunk_best)
    return -best.sqrt().cpu()


def resolve_baseline(checkpoint_dir: str | Path, metadata: dict[str, Any],
                     explicit: str | Path | None) -> tuple[Path | None, str | None]:
    """(path of the DAE-only checkpoint or None, a note when there is none).

    An explicitly given path must exist; a path recorded in the metadata (absolute, or
    relative to the checkpoint directory) that is gone only drops the baseline."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not (path / MANIFEST).is_file():
            raise CheckpointError(f"{path}: baseline is not a checkpoint (no {MANIFEST})")
        return path, None
    recorded = metadata.get("warmup_checkpoint")
    if not recorded:
        return None, ("dae_only omitted: no --baseline given and the checkpoint records no "
                      "warmup_checkpoint")
    path = Path(str(recorded)).expanduser()
    if not path.is_absolute():
        path = Path(checkpoint_dir) / path
    if not (path / MANIFEST).is_file():
        return None, f"dae_only omitted: the recorded warmup_checkpoint {path} is not there"
    return path, None


def _summary(scores: torch.Tensor) -> dict[str, float]:
    s = scores.double()
    return {"mean": float(s.mean()), "std": float(s.std()) if s.numel() > 1 else 0.0,
            "median": float(s.median())}


def evaluate_ood(checkpoint_dir: str | Path, *, baseline_checkpoint: str | Path | None = None,
                 per_set: int = 500, seed: int = 0, device: str = "auto",
                 sets: tuple[str, ...] | None = None,
                 on_progress: ProgressFn | None = None) -> dict[str, Any]:
    """AUROC / AUPR-in / FPR95 of the checkpoint's score and of the baselines on every OOD
    set.  ``seed`` fixes the OOD sets; the score's own noise draws and seed are the
    checkpoint's scoring settings, so the numbers match what the service returns."""
    started = time.perf_counter()
    if per_set < 1:
        raise ValueError("per_set must be >= 1")
    sets = tuple(sets) if sets is not None else OOD_SETS
    unknown = [s for s in sets if s not in OOD_SETS]
    if unknown:
        raise ValueError(f"unknown OOD sets {unknown}; choose from {list(OOD_SETS)}")
    say = on_progress or (lambda message: None)
    dev = resolve_device(device)
    loaded = load_checkpoint(checkpoint_dir, device=dev)
    config = loaded.config
    net, scoring = config.network, config.scoring
    train, holdout = load_splits(config)
    if len(holdout) < 2:
        raise DatasetError("eval-ood needs a held-out split; the checkpoint's "
                           "data.holdout_fraction leaves none")

    baseline_path, note = resolve_baseline(checkpoint_dir, loaded.metadata,
                                           baseline_checkpoint)
    notes = [note] if note else []

    def texture_scorer(ckpt: LoadedCheckpoint) -> Callable[[torch.Tensor], torch.Tensor]:
        # Baselines are scored with the evaluated checkpoint's sigma, draws and seed, so the
        # comparison isolates the weights.
        return lambda x: score_images(ckpt, x, sigma=scoring.sigma, draws=scoring.draws,
                                      seed=scoring.seed)

    scorers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "model": texture_scorer(loaded)}
    if baseline_path is not None:
        baseline = load_checkpoint(baseline_path, device=dev)
        b_net = baseline.config.network
        if (b_net.image_size, b_net.channels) != (net.image_size, net.channels):
            raise CheckpointError(f"{baseline_path}: baseline images are {b_net.channels}x"
                                  f"{b_net.image_size}^2, the checkpoint's "
                                  f"{net.channels}x{net.image_size}^2")
        scorers["dae_only"] = texture_scorer(baseline)
    scorers["knn_pixel"] = lambda x: knn_pixel_scores(x.to(dev), train.images)

    x_in = to_model_range(holdout.images)
    images = {"in_distribution": x_in}
    for name in sets:
        images[name] = build_ood_set(name, n=per_set, image_size=net.image_size,
                                     channels=net.channels, seed=seed, holdout=holdout)

    scores: dict[str, dict[str, torch.Tensor]] = {}
    for scorer_name, scorer in scorers.items():
        say(f"scoring with {scorer_name}")
        scores[scorer_name] = {key: scorer(x) for key, x in images.items()}

    def metrics_for(scorer_name: str) -> dict[str, dict[str, float]]:
        s = scores[scorer_name]
        return {name: ood_metrics(s["in_distribution"], s[name]) for name in sets}

    report: dict[str, Any] = {
        "ood": metrics_for("model"),
        "baselines": {name: metrics_for(name) for name in scorers if name != "model"},
        "sigma": scoring.sigma,
        "draws": scoring.draws,
        "scoring_seed": scoring.seed,
        "seed": seed,
        "checkpoint": str(checkpoint_dir),
        "step": loaded.step,
        "dataset": config.data.dataset,
        "baseline_checkpoint": str(baseline_path) if baseline_path is not None else None,
        "in_distribution_count": int(x_in.shape[0]),
        "per_set": per_set,
        "score_summary": {name: {key: _summary(v) for key, v in s.items()}
                          for name, s in scores.items()},
        "notes": notes,
    }
    if "constant" in sets:
        # The blank canvas is deterministic, so its first members all score the same.
        k = blank_count(per_set)
        report["blank_canvas"] = {name: auroc(s["in_distribution"], s["constant"][:k])
                                  for name, s in scores.items()}
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _row(metrics: dict[str, float]) -> str:
    return f"{metrics['auroc']:6.3f} {metrics['aupr_in']:6.3f} {metrics['fpr95']:6.3f}"


def format_ood_table(report: dict[str, Any]) -> str:
    """Plain-text table: one row per OOD set, AUROC / AUPR-in / FPR95 per scorer."""
    columns = [("model", report["ood"])] + list(report.get("baselines", {}).items())
    sets = list(report["ood"])
    width = max([len("set")] + [len(s) for s in sets] + [len("blank canvas")])
    cell = 20
    lines = [
        f"OOD detection: {report.get('checkpoint', '')} (step {report.get('step', '?')}); "
        f"score -U^c at sigma={report['sigma']}, {report['draws']} draws; "
        f"in-distribution: {report.get('in_distribution_count', '?')} held-out images, "
        f"{report.get('per_set', '?')} per OOD set",
        " " * width + " | " + " | ".join(f"{name:^{cell}}" for name, _ in columns),
        " " * width + " | " + " | ".join(f"{'AUROC  AUPRin  FPR95':^{cell}}" for _ in columns),
        "-" * (width + len(columns) * (cell + 3) + 1),
    ]
    for s in sets:
        lines.append(f"{s:<{width}} | " + " | ".join(f"{_row(m[s]):^{cell}}"
                                                     for _, m in columns))
    if sets:
        means = [{k: float(np.mean([m[s][k] for s in sets])) for k in ("auroc", "aupr_in",
                                                                       "fpr95")}
                 for _, m in columns]
        lines.append(f"{'mean':<{width}} | " + " | ".join(f"{_row(m):^{cell}}" for m in means))
    blank = report.get("blank_canvas")
    if blank:
        lines.append(f"{'blank canvas':<{width}} | " + " | ".join(
            f"{'AUROC ' + format(blank[name], '.3f'):^{cell}}" for name, _ in columns
            if name in blank))
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
