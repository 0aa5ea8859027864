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

eval-samples
    Each sampler row draws n samples (batches of 64, timed) with the checkpoint's sampler
    defaults; quality is measured in the feature space of the project's classifier
    (``classifier.py``, trained on the same train split and cached): the Frechet distance
    to the held-out split's features, the mean max-softmax confidence and the histogram of
    predicted classes (mode coverage).  See ``evaluate_samples`` for the rows.
"""

from __future__ import annotations

import math
import time
import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .checkpoints import (MANIFEST, CheckpointError, LoadedCheckpoint,
                          load_checkpoint)
from .data import DatasetError, to_model_range
from .formats.config import ConfigError
from .metrics import auroc, ood_metrics
from .ood_sets import OOD_SETS, blank_count, build_ood_set, dataset_ood_set
from .pipeline import fit_score_reference, load_splits, resolve_device, score_images

ProgressFn = Callable[[str], None]


# --- OOD -----------------------------------------------------------------------------------

@torch.no_grad()
def knn_pixel_scores(queries: torch.Tensor, reference: torch.Tensor, *, query_chunk: int = 512,
                     reference_chunk: int = 2048) -> torch.Tensor:
    """-min_j ||x - t_j||_2 over the reference images, for each query x (float [-1, 1]).

    ``reference`` may be uint8 (converted chunk by chunk, so a 50k-image CIFAR train set never
    exists as floats at once).  The nearest neighbour in each chunk is found with
    ||x||^2 + ||t||^2 - 2 x.t (one matmul per chunk pair); its distance is then recomputed
    directly as ||x - t||, because the expanded form cancels catastrophically in float32 for
    near-duplicates (an exact training member would read ~1e-3 instead of 0)."""
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
            nearest = d2.argmin(dim=1)
            chunk_best = (q - ref[nearest]).pow(2).sum(1)
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


def scored_like(baseline: LoadedCheckpoint, model: LoadedCheckpoint,
                train_images: torch.Tensor) -> LoadedCheckpoint:
    """The baseline with the evaluated model's scoring settings (score, sigmas, draws, seed),
    so that a comparison isolates the weights; a texture+semantic score gets the baseline's
    own standardisation on ``train_images`` (model range), as its calibration would."""
    scored = dataclasses.replace(baseline, config=baseline.config.replace(
        scoring=asdict(model.config.scoring)))
    reference = fit_score_reference(scored, train_images)
    return dataclasses.replace(scored, calibration={"reference": reference}) if reference \
        else scored


def model_and_baseline(checkpoint_dir: str | Path, *, device: str | torch.device = "cpu"
                       ) -> dict[str, LoadedCheckpoint]:
    """{"model": the checkpoint, "dae_only": its recorded warm-up baseline, when there is one,
    scored like the model}: the scorers that the benchmarks compare side by side."""
    loaded = load_checkpoint(checkpoint_dir, device=device)
    scorers = {"model": loaded}
    baseline, _ = resolve_baseline(checkpoint_dir, loaded.metadata, None)
    if baseline is not None:
        train, _ = load_splits(loaded.config)
        scorers["dae_only"] = scored_like(load_checkpoint(baseline, device=device), loaded,
                                          to_model_range(train.images))
    return scorers


def _summary(scores: torch.Tensor) -> dict[str, float]:
    s = scores.double()
    return {"mean": float(s.mean()), "std": float(s.std()) if s.numel() > 1 else 0.0,
            "median": float(s.median())}


def evaluate_ood(checkpoint_dir: str | Path, *, baseline_checkpoint: str | Path | None = None,
                 per_set: int = 500, seed: int = 0, device: str = "auto",
                 sets: tuple[str, ...] | None = None,
                 datasets: dict[str, str] | None = None,
                 on_progress: ProgressFn | None = None) -> dict[str, Any]:
    """AUROC / AUPR-in / FPR95 of the checkpoint's score and of the baselines on every OOD
    set.  ``seed`` fixes the OOD sets; the score's own noise draws and seed are the
    checkpoint's scoring settings, so the numbers match what the service returns.

    ``datasets`` adds OOD sets from dataset specs, {name: spec} (e.g. {"svhn":
    "~/data/test_32x32.mat"}), up to ``per_set`` images each."""
    started = time.perf_counter()
    sets = checked_ood_sets(sets, per_set)
    say = on_progress or (lambda message: None)
    dev = resolve_device(device)
    loaded = load_checkpoint(checkpoint_dir, device=dev)
    config = loaded.config
    train, holdout = load_splits(config)
    if len(holdout) < 2:
        raise DatasetError("eval-ood needs a held-out split; the checkpoint's "
                           "data.holdout_fraction leaves none")
    baseline_path, note = resolve_baseline(checkpoint_dir, loaded.metadata,
                                           baseline_checkpoint)
    scorers = ood_scorers(loaded, baseline_path, train.images, dev)
    images = ood_images(config.network, holdout, sets, datasets or {}, per_set=per_set,
                        seed=seed, say=say)
    sets = tuple(sets) + tuple(datasets or {})
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for scorer_name, scorer in scorers.items():
        say(f"scoring with {scorer_name}")
        scores[scorer_name] = {key: scorer(x) for key, x in images.items()}

    def metrics_for(scorer_name: str) -> dict[str, dict[str, float]]:
        s = scores[scorer_name]
        return {name: ood_metrics(s["in_distribution"], s[name]) for name in sets}

    scoring = config.scoring
    report: dict[str, Any] = {
        "ood": metrics_for("model"),
        "baselines": {name: metrics_for(name) for name in scorers if name != "model"},
        "score": scoring.score, "sigma": scoring.sigma,
        **({"semantic_sigma": scoring.semantic_sigma} if scoring.score != "texture" else {}),
        "draws": scoring.draws, "scoring_seed": scoring.seed, "seed": seed,
        "checkpoint": str(checkpoint_dir), "step": loaded.step,
        "dataset": config.data.dataset,
        "baseline_checkpoint": str(baseline_path) if baseline_path is not None else None,
        "in_distribution_count": int(images["in_distribution"].shape[0]),
        "per_set": per_set,
        "score_summary": {name: {key: _summary(v) for key, v in s.items()}
                          for name, s in scores.items()},
        "notes": [note] if note else [],
    }
    if "constant" in sets:
        # The blank canvas is deterministic, so its first members all score the same.
        k = blank_count(per_set)
        report["blank_canvas"] = {name: auroc(s["in_distribution"], s["constant"][:k])
                                  for name, s in scores.items()}
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def checked_ood_sets(sets: tuple[str, ...] | None, per_set: int) -> tuple[str, ...]:
    """The named OOD sets (default: all of OOD_SETS), or ConfigError (a ValueError, so that
    the CLI reports bad arguments as one line)."""
    if per_set < 1:
        raise ConfigError("per_set must be >= 1")
    sets = tuple(sets) if sets is not None else OOD_SETS
    unknown = [s for s in sets if s not in OOD_SETS]
    if unknown:
        raise ConfigError(f"unknown OOD sets {unknown}; choose from {list(OOD_SETS)}")
    return sets


def ood_scorers(loaded: LoadedCheckpoint, baseline_path: Path | None,
                train_images: torch.Tensor, device: torch.device
                ) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The scores eval-ood compares: the model's, the DAE-only baseline's (scored like the
    model) when there is one, and the pixel-space nearest-neighbour baseline."""
    net = loaded.config.network
    scorers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "model": lambda x: score_images(loaded, x)}
    if baseline_path is not None:
        baseline = load_checkpoint(baseline_path, device=device)
        b_net = baseline.config.network
        if (b_net.image_size, b_net.channels) != (net.image_size, net.channels):
            raise CheckpointError(f"{baseline_path}: baseline images are {b_net.channels}x"
                                  f"{b_net.image_size}^2, the checkpoint's "
                                  f"{net.channels}x{net.image_size}^2")
        like_model = scored_like(baseline, loaded, to_model_range(train_images))
        scorers["dae_only"] = lambda x: score_images(like_model, x)
    scorers["knn_pixel"] = lambda x: knn_pixel_scores(x.to(device), train_images)
    return scorers


def ood_images(net, holdout, sets: tuple[str, ...], datasets: dict[str, str], *,
               per_set: int, seed: int, say: ProgressFn) -> dict[str, torch.Tensor]:
    """The held-out split as "in_distribution", then each OOD set by name, in [-1, 1]."""
    images = {"in_distribution": to_model_range(holdout.images)}
    for name in sets:
        images[name] = build_ood_set(name, n=per_set, image_size=net.image_size,
                                     channels=net.channels, seed=seed, holdout=holdout)
    for name, spec in datasets.items():
        if name in images:
            raise ConfigError(f"OOD set name {name!r} is taken; choose another")
        say(f"loading OOD set {name} from {spec}")
        images[name] = dataset_ood_set(spec, n=per_set, image_size=net.image_size,
                                       channels=net.channels, seed=seed)
    return images


def _row(metrics: dict[str, float]) -> str:
    return f"{metrics['auroc']:6.3f} {metrics['aupr_in']:6.3f} {metrics['fpr95']:6.3f}"


def format_ood_table(report: dict[str, Any]) -> str:
    """Plain-text table: one row per OOD set, AUROC / AUPR-in / FPR95 per scorer."""
    columns = [("model", report["ood"])] + list(report.get("baselines", {}).items())
    sets = list(report["ood"])
    width = max([len("set")] + [len(s) for s in sets] + [len("blank canvas")])
    cell = 20
    if report.get("score", "texture") == "texture":
        score = f"score -U^c at sigma={report['sigma']}"
    else:
        score = (f"score {report['score']} (U^c at sigma={report['sigma']}, U^h at "
                 f"sigma={report.get('semantic_sigma')})")
    lines = [
        f"OOD detection: {report.get('checkpoint', '')} (step {report.get('step', '?')}); "
        f"{score}, {report['draws']} draws; "
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


# --- sample quality ------------------------------------------------------------------------

SAMPLE_ROWS: tuple[str, ...] = ("real", "two_stage", "semantic", "texture_only",
                                "texture_only_10x", "annealed")
# 128 samples (two batches of 64) keep the whole demo run near 20 minutes on one contended
# CPU thread (texture_only_10x and annealed are ~600 and ~1000 network passes per batch).
# Frechet distance is biased upward at small n, so compare rows only at equal n; the real
# row shows the floor that n allows.
DEFAULT_SAMPLES_N = 128
TIMING_BATCH = 64


def sample_metrics(classifier, images: torch.Tensor, reference: torch.Tensor
                   ) -> dict[str, Any]:
    """fd, confidence, class_histogram (counts) of images against reference features."""
    from .metrics import frechet_distance_from_features

    finite = torch.isfinite(images.flatten(1)).all(1)
    feats, probs = classifier.features_and_probabilities(images[finite])
    histogram = torch.bincount(probs.argmax(1), minlength=classifier.num_classes) \
        if probs.shape[0] else torch.zeros(classifier.num_classes, dtype=torch.long)
    out: dict[str, Any] = {
        "fd": (frechet_distance_from_features(feats.double().numpy(),
                                              reference.double().numpy())
               if feats.shape[0] >= 2 else None),
        "confidence": float(probs.max(1).values.mean()) if probs.shape[0] else None,
        "class_histogram": [int(c) for c in histogram],
        "n": int(images.shape[0]),
    }
    if not bool(finite.all()):
        out["nonfinite"] = int((~finite).sum())  # diverged chains, left out of the metrics
    out["max_class_fraction"] = (max(out["class_histogram"]) / max(1, int(finite.sum())))
    return out


def sample_in_batches(loaded: LoadedCheckpoint, *, sampler: str, n: int, seed: int,
                      overrides: dict[str, Any], keep_semantic: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None, int, float, float]:
    """(images, semantic images, steps, seconds for all n, seconds of the latent stage).

    Samples come in batches of 64 with seeds seed, seed + 1, ...: the batch the timing is
    quoted for, and the same images for any n that shares the first batches.  The latent
    stage's time is read from the progress callback at its last step."""
    from .pipeline import generate

    images, semantic, steps = [], [], 0
    total = latent = 0.0
    for b, start in enumerate(range(0, n, TIMING_BATCH)):
        size = min(TIMING_BATCH, n - start)
        began = time.perf_counter()
        marks: dict[str, float] = {}

        def on_progress(stage: str, step: int, total_steps: int) -> None:
            if stage == "latent":
                marks["latent"] = time.perf_counter()

        result = generate(loaded, n=size, seed=seed + b, sampler=sampler,
                          on_progress=on_progress, **overrides)
        ended = time.perf_counter()
        total += ended - began
        latent += marks.get("latent", began) - began
        images.append(result.images.cpu())
        if keep_semantic and result.semantic is not None:
            semantic.append(result.semantic.cpu())
        steps = result.steps
    return (torch.cat(images), torch.cat(semantic) if semantic else None, steps, total, latent)


def evaluate_samples(checkpoint_dir: str | Path, *, n: int = DEFAULT_SAMPLES_N, seed: int = 0,
                     device: str = "auto", grids_dir: str | Path | None = None,
                     rows: list[str] | tuple[str, ...] | None = None,
                     classifier_cache: str | Path | None = None,
                     classifier_settings=None,
                     on_progress: ProgressFn | None = None) -> dict[str, Any]:
    """Sample quality of each sampler in the feature space of the project's classifier.

    Rows (each: fd, confidence, class_histogram as counts of predicted classes summing to n,
    seconds_per_64, steps):
      real              n images of the train split (not the reference): the floor of fd at
                        this n.  seconds_per_64 is 0, steps 0.
      two_stage         the checkpoint's sampler defaults (K latent + T pixel steps).
      semantic          h(z_K) of that same run; its time is the latent stage's.
      texture_only      pixel Langevin from noise, K + T steps (same gradient count).
      texture_only_10x  10 (K + T) steps.
      annealed          annealed_levels x annealed_steps_per_level steps (the defaults).
    fd compares against the held-out split's features.  Every sampler row uses the seeds
    seed, seed + 1, ... per batch of 64; seconds_per_64 is the wall time of all batches
    scaled to 64 samples."""
    from .classifier import classifier_for

    started = time.perf_counter()
    rows = checked_sample_rows(rows, n)
    say = on_progress or (lambda message: None)
    dev = resolve_device(device)
    loaded = load_checkpoint(checkpoint_dir, device=dev)
    config = loaded.config
    splits = load_splits(config)
    train, holdout = splits
    say("classifier")
    classifier = classifier_for(config, splits, settings=classifier_settings,
                                cache_dir=classifier_cache, device=dev)
    recorder = SampleRowRecorder(classifier, classifier.features(to_model_range(holdout.images)),
                                 n=n, grid_root=Path(grids_dir) if grids_dir else None)
    for row in rows:
        if row not in recorder.results:
            say(f"row {row}")
            run_sample_row(row, loaded, recorder, rows=rows, train=train, n=n, seed=seed)
    report: dict[str, Any] = {
        "classifier_accuracy": classifier.accuracy,
        "rows": {row: recorder.results[row] for row in SAMPLE_ROWS if row in recorder.results},
        "n": n, "seed": seed, "checkpoint": str(checkpoint_dir), "step": loaded.step,
        "dataset": config.data.dataset, "reference_count": len(holdout),
        "sampler": asdict(config.sampler), "device": str(dev),
        "classifier": classifier.describe(),
        "class_histogram_unit": "counts of predicted classes over the row's samples",
    }
    if recorder.grids:
        report["grids"] = recorder.grids
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def run_sample_row(row: str, loaded: LoadedCheckpoint, recorder: "SampleRowRecorder", *,
                   rows: list[str], train, n: int, seed: int) -> None:
    """Draw one row's images and record them; one two-stage run serves two_stage and
    semantic (h(z_K) of the same chains) alike."""
    if row == "real":
        recorder.record("real", real_images(train, n, seed), steps=0, seconds=0.0)
    elif row in ("two_stage", "semantic"):
        images, semantic, steps, seconds, latent = sample_in_batches(
            loaded, sampler="two_stage", n=n, seed=seed, overrides={}, keep_semantic=True)
        if "two_stage" in rows:
            recorder.record("two_stage", images, steps=steps, seconds=seconds)
        if "semantic" in rows:
            recorder.record("semantic", semantic, steps=loaded.config.sampler.steps_latent,
                            seconds=latent)
    else:
        sampler, overrides = sampler_row_plan(row, loaded.config.sampler)
        images, _, steps, seconds, _ = sample_in_batches(loaded, sampler=sampler, n=n,
                                                         seed=seed, overrides=overrides)
        recorder.record(row, images, steps=steps, seconds=seconds)


def checked_sample_rows(rows, n: int) -> list[str]:
    """The requested rows (default: all of SAMPLE_ROWS), or ConfigError."""
    if n < 2:
        raise ConfigError("n must be >= 2 (a Frechet distance needs a covariance)")
    rows = list(SAMPLE_ROWS if not rows else rows)
    unknown = [r for r in rows if r not in SAMPLE_ROWS]
    if unknown:
        raise ConfigError(f"unknown rows {unknown}; choose from {list(SAMPLE_ROWS)}")
    return rows


def sampler_row_plan(row: str, settings) -> tuple[str, dict[str, Any]]:
    """(sampler, overrides) of a sampler row other than two_stage and semantic."""
    if row == "texture_only_10x":
        # texture_only runs steps_latent + steps_pixel pixel steps: put all 10x in one term.
        return "texture_only", {"steps_latent": 0,
                                "steps_pixel": 10 * (settings.steps_latent
                                                     + settings.steps_pixel)}
    return row, {}  # texture_only, annealed: the checkpoint's defaults


def real_images(train, n: int, seed: int) -> torch.Tensor:
    """n images of the train split in [-1, 1] (cycling through it if n is larger)."""
    generator = torch.Generator().manual_seed(seed)
    passes = -(-n // len(train))
    index = torch.cat([torch.randperm(len(train), generator=generator)
                       for _ in range(passes)])[:n]
    return to_model_range(train.images[index])


class SampleRowRecorder:
    """Each row's metrics in the classifier's feature space, and its grid PNG if asked."""

    def __init__(self, classifier, reference: torch.Tensor, *, n: int,
                 grid_root: Path | None):
        self.classifier, self.reference, self.n = classifier, reference, n
        self.grid_root = grid_root
        if grid_root is not None:
            grid_root.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, dict[str, Any]] = {}
        self.grids: dict[str, str] = {}

    def record(self, row: str, images: torch.Tensor, *, steps: int, seconds: float) -> None:
        from .images import grid_png

        metrics = sample_metrics(self.classifier, images, self.reference)
        self.results[row] = {**metrics,
                             "seconds_per_64": round(seconds * TIMING_BATCH / self.n, 3),
                             "steps": int(steps)}
        if self.grid_root is not None:
            path = self.grid_root / f"{row}.png"
            path.write_bytes(grid_png(images[:64].nan_to_num(-1.0)))
            self.grids[row] = str(path)


def format_samples_table(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [f"Sample quality: {report.get('checkpoint', '')} (step {report.get('step', '?')}); "
             f"n={report.get('n', '?')} per row vs {report.get('reference_count', '?')} "
             f"held-out images; classifier accuracy {report['classifier_accuracy']:.3f}",
             f"{'row':<17} {'FD':>9} {'conf':>6} {'max cls':>7} {'steps':>6} {'s/64':>8}  "
             "class histogram",
             "-" * 96]
    for name, r in rows.items():
        fd = f"{r['fd']:9.2f}" if r.get("fd") is not None else f"{'n/a':>9}"
        conf = f"{r['confidence']:6.3f}" if r.get("confidence") is not None else f"{'n/a':>6}"
        share = f"{r.get('max_class_fraction', 0.0):7.2f}"
        hist = " ".join(f"{c:3d}" for c in r["class_histogram"])
        lines.append(f"{name:<17} {fd} {conf} {share} {r['steps']:6d} "
                     f"{r['seconds_per_64']:8.2f}  {hist}")
        if r.get("nonfinite"):
            lines.append(f"  note: {r['nonfinite']} {name} samples were not finite and are "
                         "left out")
    return "\n".join(lines)
