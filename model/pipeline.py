"""High-level operations shared by the CLI and the workers: train, generate, score, calibrate.

These functions are the whole surface the worker adapters call; they take plain values and
callbacks and know nothing of HTTP or queues.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .allocator import keep_freed_memory
from .checkpoints import (CheckpointError, LoadedCheckpoint, attach_latent_prior,
                          load_checkpoint, load_training_state, read_manifest,
                          save_checkpoint)
from .data import (ImageDataset, load_dataset, to_model_range,
                   train_holdout_split)
from .distributed import SINGLE, DistContext, barrier
from .energies import ChunkScorer, texture_score
from .formats.archives import DatasetError
from .formats.config import ConfigError, ExperimentConfig, SamplerConfig
from .formats.errors import Cancelled
from .latent_prior import fit_latent_prior
from .scores import FEATURE_FORM, REFERENCE_IMAGES, combined_score, reference_statistics
from .samplers import (CancelFn, ProgressFn, SampleResult, StateFn, sample,
                       with_overrides)
from .training import StepCallback, StepMetrics, Trainer

SNAPSHOT_N, SNAPSHOT_SEED = 16, 0  # training progress grids: 4x4 samples, one fixed seed
CALIBRATION_QUANTILES = 101  # 0th..100th percentile of held-out scores
OOD_FALSE_REJECT_RATE = 0.05  # is_ood threshold: 5% of held-out images fall below it
WARMUP_DIR = "warmup"  # sub-directory holding the reconstruction-only (DAE) checkpoint


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_splits(config: ExperimentConfig, dataset: ImageDataset | None = None
                ) -> tuple[ImageDataset, ImageDataset]:
    net, data = config.network, config.data
    if dataset is None:
        dataset = load_dataset(data.dataset, image_size=net.image_size, channels=net.channels)
    return train_holdout_split(dataset, holdout_fraction=data.holdout_fraction,
                               seed=data.split_seed)


# --- training ------------------------------------------------------------------------------

def run_training(config: ExperimentConfig, out_dir: str | Path, *, resume: bool = False,
                 init_from: str | Path | None = None,
                 device: str = "auto", dataset: ImageDataset | None = None,
                 on_step_end: StepCallback | None = None,
                 should_cancel: CancelFn | None = None,
                 extra_metadata: dict[str, Any] | None = None,
                 dist: DistContext = SINGLE,
                 snapshot_every: int = 0,
                 on_snapshot: Callable[[int, torch.Tensor], None] | None = None) -> Path:
    """Train (or resume) into ``out_dir`` and return it.  Writes a resumable checkpoint every
    ``training.checkpoint_every`` steps, on cancellation, and at the end; the final checkpoint
    carries an OOD calibration computed on the held-out split.

    ``on_snapshot(step, images)`` receives SNAPSHOT_N samples of the current model every
    ``snapshot_every`` steps and at the last step: the checkpoint's sampler with a fixed
    seed, so successive grids show the same chains as the model learns.  Sampling uses its
    own generator and restores train mode: the run is the same with or without snapshots.

    ``init_from`` continues another run's weights, optimizer, RNG and step under this config
    (same network), e.g. a contrastive phase with new settings after a shared warm-up.  From
    an exported checkpoint (no training state) only the weights are taken, from step 0.

    ``dist`` makes this process one rank of a data-parallel run (model/distributed.py):
    every rank resumes from the same checkpoint, only rank 0 writes checkpoints and reports
    progress, and a barrier after each write keeps the ranks in step."""
    out_dir = Path(out_dir)
    resumed_seconds = 0.0
    if resume and (out_dir / "checkpoint.json").exists():
        config, resumed_seconds = resumed_config(config, out_dir)
        init_from = out_dir
    train_set, holdout = load_splits(config, dataset)
    trainer = Trainer(config, train_set, device=resolve_device(device), dist=dist)
    extra = dict(extra_metadata or {})
    if init_from is not None:
        seconds = start_from_checkpoint(trainer, Path(init_from), out_dir, extra)
        if Path(init_from) != out_dir:
            resumed_seconds = seconds
    recorder = TrainingRecorder(trainer, out_dir, dist=dist, resumed_seconds=resumed_seconds,
                                extra_metadata=extra, holdout_size=len(holdout),
                                on_step_end=on_step_end, snapshot_every=snapshot_every,
                                on_snapshot=on_snapshot)
    try:
        trainer.run(on_step_end=recorder.step_end, should_cancel=should_cancel)
    except Cancelled:
        recorder.save()
        raise
    calibration = None
    if len(holdout) > 0 and dist.is_main:
        trainer.model.eval()
        calibration = calibrate_scores(
            LoadedCheckpoint(model=trainer.model, config=config, step=trainer.step),
            to_model_range(holdout.images), train_images=to_model_range(train_set.images))
    recorder.save(calibration)
    if config.sampler.latent_init == "prior" and dist.is_main:
        fit_prior(out_dir, model=trainer.model, config=config, train_images=train_set.images)
    barrier(dist)
    return out_dir


def resumed_config(config: ExperimentConfig, out_dir: Path) -> tuple[ExperimentConfig, float]:
    """The stored run's config (it wins, except that the number of iterations may be
    extended) and the training seconds it has already spent."""
    manifest = read_manifest(out_dir)
    stored = ExperimentConfig.from_dict(manifest["config"])
    config = stored.replace(training={"iterations": config.training.iterations})
    return config, float(manifest.get("metadata", {}).get("train_seconds", 0.0))


def start_from_checkpoint(trainer: Trainer, init_from: Path, out_dir: Path,
                          extra_metadata: dict[str, Any]) -> float:
    """Load ``init_from``'s weights into the trainer, and its training state when it has one
    (or is this run's own directory); return the training seconds it had spent."""
    loaded = load_checkpoint(init_from, device=trainer.device)
    if loaded.config.network != trainer.config.network:
        raise CheckpointError(f"{init_from}: its network config differs from this run's")
    trainer.model.load_state_dict(loaded.model.state_dict())
    has_state = bool(read_manifest(init_from).get("training_state"))
    if has_state or init_from == out_dir:
        tensors, meta = load_training_state(init_from)
        trainer.load_state_tensors(tensors, meta, strict_buffers=init_from == out_dir)
    else:
        # An exported checkpoint (weights only): this run starts at step 0 with fresh
        # optimizers, chains and RNG from its own seed, e.g. more contrastive iterations
        # on a shipped model with --warmup 0.
        extra_metadata["init_from_weights"] = str(init_from)
    return float(loaded.metadata.get("train_seconds", 0.0))


class TrainingRecorder:
    """What a training run writes as it goes: the checkpoint metadata, periodic and final
    checkpoints, the warm-up (DAE-only) checkpoint, progress callbacks and sample snapshots.
    Only rank 0 writes; a barrier after each write keeps data-parallel ranks in step."""

    def __init__(self, trainer: Trainer, out_dir: Path, *, dist: DistContext,
                 resumed_seconds: float, extra_metadata: dict[str, Any], holdout_size: int,
                 on_step_end: StepCallback | None, snapshot_every: int,
                 on_snapshot: Callable[[int, torch.Tensor], None] | None):
        self.trainer, self.config = trainer, trainer.config
        self.out_dir, self.dist = out_dir, dist
        self.resumed_seconds, self.extra_metadata = resumed_seconds, extra_metadata
        self.holdout_size = holdout_size
        self.on_step_end, self.on_snapshot = on_step_end, on_snapshot
        self.snapshot_every = snapshot_every
        self.started = time.perf_counter()
        self.recent: list[StepMetrics] = []

    def metadata(self) -> dict[str, Any]:
        trainer = self.trainer
        contrastive = [m for m in self.recent if m.phase == "contrastive"]
        info: dict[str, Any] = {
            "train_seconds": round(self.resumed_seconds + time.perf_counter() - self.started,
                                   1),
            "dataset": self.config.data.dataset, "train_size": len(trainer.dataset),
            "holdout_size": self.holdout_size, "torch": torch.__version__,
            "python": platform.python_version(), "device": str(trainer.device),
            "parameters": trainer.model.parameter_count(),
        }
        if (self.out_dir / WARMUP_DIR / "checkpoint.json").exists():
            info["warmup_checkpoint"] = WARMUP_DIR  # relative: moves with the checkpoint
        if contrastive:
            info["final_data_energy"] = float(np.mean([m.data_energy for m in contrastive]))
            info["final_negative_energy"] = float(np.mean([m.negative_energy
                                                           for m in contrastive]))
        info.update(self.extra_metadata)
        return info

    def save(self, calibration: dict[str, Any] | None = None) -> None:
        if self.dist.is_main:
            info = self.metadata()
            if self.dist.active:
                info["world_size"] = self.dist.world_size
            save_checkpoint(self.out_dir, model=self.trainer.model, config=self.config,
                            step=self.trainer.step, metadata=info, calibration=calibration,
                            training_state=self.trainer.state_tensors())
        barrier(self.dist)

    def step_end(self, metrics: StepMetrics) -> None:
        trainer, every = self.trainer, self.config.training.checkpoint_every
        self.recent.append(metrics)
        del self.recent[:-20]
        if self.on_step_end is not None and self.dist.is_main:
            self.on_step_end(metrics)
        warmup_steps = self.config.training.warmup_steps
        if metrics.step == warmup_steps and trainer.total_steps > warmup_steps:
            # The DAE after reconstruction only: the baseline the evaluation compares against.
            if self.dist.is_main:
                save_checkpoint(self.out_dir / WARMUP_DIR, model=trainer.model,
                                config=self.config, step=trainer.step,
                                metadata={**self.metadata(), "phase": "warmup"})
            barrier(self.dist)
        if every and metrics.step % every == 0 and metrics.step < trainer.total_steps:
            self.save()
        if self.on_snapshot is not None and self.snapshot_every and (
                metrics.step % self.snapshot_every == 0
                or metrics.step == trainer.total_steps):
            self.on_snapshot(metrics.step, snapshot_samples(trainer.model, self.config))


def fit_prior(directory: str | Path, *, model, config: ExperimentConfig,
              train_images: torch.Tensor, components: tuple[int, ...] | None = None
              ) -> dict[str, Any]:
    """Fit the latent prior to the training images' latents (at the latent chain's sigma)
    and attach it to the checkpoint in ``directory``; returns the fit's report.  The model's
    train/eval mode is left as it was (encode_latents encodes in eval mode)."""
    options = {"components": components} if components else {}
    prior, report = fit_latent_prior(model, to_model_range(train_images),
                                     sigma=config.sampler.sigma_latent,
                                     seed=config.training.seed, **options)
    attach_latent_prior(directory, prior, report)
    return report


def snapshot_samples(model, config: ExperimentConfig) -> torch.Tensor:
    """SNAPSHOT_N two-stage samples of a model in training (for progress grids).  The latent
    prior is fitted only after training, so progress grids start chains from N(0, I)."""
    settings = with_overrides(config.sampler, latent_init="normal")
    return sample(model, sampler="two_stage", n=SNAPSHOT_N, seed=SNAPSHOT_SEED,
                  settings=settings, noise=config.noise).images.detach().cpu()


# --- generation ----------------------------------------------------------------------------

def sampler_settings(config: ExperimentConfig, **overrides: Any) -> SamplerConfig:
    """The checkpoint's sampler defaults with request overrides (None means default)."""
    return with_overrides(config.sampler, **overrides)


@dataclass(frozen=True)
class InferenceOptions:
    """Optional fast paths of a serving model.  Each is off unless it was measured to win
    (docs/PERFORMANCE.md); ``bf16`` changes the numbers (scores, samples) and so is opt-in."""
    channels_last: bool = False  # NHWC activations for the convolutions (CUDA)
    compile: bool = False  # torch.compile the denoiser
    bf16: bool = False  # bfloat16 autocast on CUDA
    keep_freed_memory: bool = True  # CPU: no page faults per forward (model/allocator.py)
    trace_scoring: bool = True  # score through a traced chunk (see traced_chunk_scorer)


def traced_chunk_scorer(dae, decoder=None, *, image_size: int, channels: int):
    """One scoring chunk (``model.energies.ChunkScorer``: repeat, add noise, DAE forward,
    squared norm, mean over draws) traced with TorchScript: one call runs it all in C++.
    With ``decoder``, the chunk of the semantic reading (encoder, then h).

    Why: in the service the model shares its process with the API (embedded) or the job
    threads (distributed), and eager PyTorch re-acquires the GIL after every operator.  While
    another thread runs Python, each re-acquisition waits, and a forward with ~100 operators
    slowed from 23 to 190 ms per image next to one busy Python thread; with the denoiser
    traced, it took 45 ms (docs/PERFORMANCE.md).  Tracing the whole chunk also removes the
    ~15 eager operators around the forward.  The traced graph is the same operators in the
    same order, with the batch size, the number of draws and sigma as inputs: scores are
    bit-identical to eager at every batch size (tests/model/test_inference_paths.py).

    torch.jit.trace is deprecated in favour of torch.compile and torch.export, but neither
    runs a CPU forward outside the GIL in the pinned torch 2.13 (an exported program runs op by
    op in Python; inductor's default wrapper is Python), so the warnings are silenced here
    only; revisit when torch is upgraded.  Group norm's batch-size check is a Python branch
    that the tracer reports; it only matters for batches of one in training mode."""
    import warnings

    param = next(dae.parameters())
    like = dict(device=param.device, dtype=param.dtype)
    example = (torch.zeros((3, channels, image_size, image_size), **like),
               torch.zeros((5, channels, image_size, image_size), **like),
               torch.tensor(0.05, **like))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(ChunkScorer(dae, decoder), example, check_trace=False)


def prepare_for_inference(checkpoint: LoadedCheckpoint,
                          options: InferenceOptions | None = None) -> LoadedCheckpoint:
    """Make a loaded checkpoint a serving model: eval mode and no parameter gradients, so
    that autograd records only the path from the chain state to the energy (the Langevin
    steps need d U / d x, never d U / d theta), then the optional fast paths."""
    options = options or InferenceOptions()
    model = checkpoint.model
    model.eval()
    model.requires_grad_(False)
    cuda = next(model.parameters()).device.type == "cuda"
    if options.keep_freed_memory and not cuda:
        keep_freed_memory()
    if options.channels_last and cuda:
        model.to(memory_format=torch.channels_last)
    if options.compile:
        model.dae = torch.compile(model.dae, dynamic=True)
    elif options.trace_scoring:
        net = checkpoint.config.network
        checkpoint.scoring_chunks = {"texture": traced_chunk_scorer(
            model.dae, image_size=net.image_size, channels=net.channels)}
        if checkpoint.config.scoring.score == "texture+semantic":
            checkpoint.scoring_chunks["semantic"] = traced_chunk_scorer(
                model.dae, model.decoder, image_size=net.image_size, channels=net.channels)
    checkpoint.inference = options if (cuda or not options.bf16) else \
        dataclasses.replace(options, bf16=False)
    return checkpoint


def _autocast(checkpoint: LoadedCheckpoint):
    options = getattr(checkpoint, "inference", None)
    if options is not None and options.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def generate(checkpoint: LoadedCheckpoint, *, n: int, seed: int, sampler: str = "two_stage",
             on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
             on_state: StateFn | None = None, **overrides: Any) -> SampleResult:
    settings = sampler_settings(checkpoint.config, **overrides)
    with _autocast(checkpoint):
        result = sample(checkpoint.model, sampler=sampler, n=n, seed=seed, settings=settings,
                        noise=checkpoint.config.noise, on_progress=on_progress,
                        should_cancel=should_cancel, on_state=on_state,
                        latent_prior=checkpoint.latent_prior)
    if result.images.dtype != torch.float32:
        result.images = result.images.float()
    return result


# --- scoring and calibration ---------------------------------------------------------------

def score_readings(checkpoint: LoadedCheckpoint, images: torch.Tensor, *,
                   sigma: float | None = None, draws: int | None = None,
                   seed: int | None = None) -> dict[str, torch.Tensor]:
    """The readings the checkpoint's score is made of: {"texture": -U^c(x, sigma)} (paper
    5.2), and for ``score="texture+semantic"`` also {"semantic": -U^h(x, semantic_sigma)};
    each averaged over the same ``draws`` seeded noise draws.

    The draws are shared by every image (``texture_score``), so an image's readings do not
    depend on the other images of its batch: requests can be merged into one forward batch."""
    scoring = checkpoint.config.scoring
    device = next(checkpoint.model.parameters()).device
    draws = scoring.draws if draws is None else draws
    seed = scoring.seed if seed is None else seed
    levels = {"texture": scoring.sigma if sigma is None else sigma}
    if scoring.score == "texture+semantic":
        levels["semantic"] = scoring.semantic_sigma
    chunks = checkpoint.scoring_chunks or {}
    model = checkpoint.model
    readings = {}
    with torch.inference_mode(), _autocast(checkpoint):
        x = images.to(device)
        for name, level in levels.items():
            readings[name] = texture_score(
                model.dae, x, sigma=level, draws=draws, seed=seed,
                decoder=model.decoder if name == "semantic" else None,
                chunk_scorer=chunks.get(name)).float().cpu()
    return readings


def score_images(checkpoint: LoadedCheckpoint, images: torch.Tensor, *,
                 sigma: float | None = None, draws: int | None = None,
                 seed: int | None = None, reference: dict[str, Any] | None = None
                 ) -> torch.Tensor:
    """The checkpoint's OOD score (``ScoringConfig.score``), higher = more in-distribution:
    -U^c(x, sigma) averaged over draws (paper 5.2), or the texture+semantic score of
    model/scores.py, standardised by ``reference`` (default: the one the checkpoint's
    calibration carries)."""
    if checkpoint.config.scoring.score == "texture":
        return score_readings(checkpoint, images, sigma=sigma, draws=draws, seed=seed)["texture"]
    # Checked before any forward pass: a checkpoint that cannot answer fails at once.
    reference = score_reference(checkpoint, reference, sigma=sigma, draws=draws, seed=seed)
    readings = score_readings(checkpoint, images, sigma=sigma, draws=draws, seed=seed)
    return combined_score(readings, reference)


def score_reference(checkpoint: LoadedCheckpoint, reference: dict[str, Any] | None = None, *,
                    sigma: float | None = None, draws: int | None = None,
                    seed: int | None = None) -> dict[str, Any]:
    """The standardisation of a texture+semantic score (``reference``, or else the one the
    checkpoint's calibration carries), refused unless it describes this version's features
    read at the asked settings."""
    scoring = checkpoint.config.scoring
    if reference is None:
        reference = (checkpoint.calibration or {}).get("reference")
    if not reference:
        raise CheckpointError("this checkpoint's score is texture+semantic, which is "
                              "standardised on training images, and it carries no reference; "
                              "run `debm calibrate` on it")
    if reference.get("form") != FEATURE_FORM:
        raise CheckpointError("this checkpoint's texture+semantic reference describes other "
                              f"features ({reference.get('form', 'the raw readings')}) than "
                              f"this version's ({FEATURE_FORM}); run `debm calibrate` on it")
    asked = (scoring.sigma if sigma is None else sigma, scoring.semantic_sigma,
             scoring.draws if draws is None else draws, scoring.seed if seed is None else seed)
    made = tuple(reference.get(k) for k in ("sigma", "semantic_sigma", "draws", "seed"))
    if asked != made:
        raise ConfigError(f"the texture+semantic score was standardised at (sigma, "
                          f"semantic_sigma, draws, seed) = {made}, not {asked}; score with "
                          "the checkpoint's settings, or calibrate again with the new ones")
    return reference


def fit_score_reference(checkpoint: LoadedCheckpoint, train_images: torch.Tensor
                        ) -> dict[str, Any] | None:
    """For ``score="texture+semantic"``: the mean and std of each reading over the first
    REFERENCE_IMAGES training images (model range), with the settings they were read at.
    None for the texture score, which needs none."""
    scoring = checkpoint.config.scoring
    if scoring.score == "texture":
        return None
    readings = score_readings(checkpoint, train_images[:REFERENCE_IMAGES])
    return {**reference_statistics(readings), "sigma": scoring.sigma,
            "semantic_sigma": scoring.semantic_sigma, "draws": scoring.draws,
            "seed": scoring.seed, "split": "train"}


def calibrate_scores(checkpoint: LoadedCheckpoint, holdout: torch.Tensor, *,
                     train_images: torch.Tensor | None = None) -> dict[str, Any]:
    """Quantiles of held-out in-distribution scores, for percentile and is_ood answers; for
    the texture+semantic score, first its standardisation on ``train_images`` (model range)."""
    scoring = checkpoint.config.scoring
    reference = None
    if scoring.score != "texture":
        if train_images is None or len(train_images) < 2:
            raise DatasetError("the texture+semantic score is standardised on training images; "
                               "the calibration needs the training split")
        reference = fit_score_reference(checkpoint, train_images)
    scores = score_images(checkpoint, holdout, reference=reference).double().numpy()
    quantiles = np.quantile(scores, np.linspace(0, 1, CALIBRATION_QUANTILES))
    return {
        "score": scoring.score, "sigma": scoring.sigma, "draws": scoring.draws,
        "seed": scoring.seed, "count": int(scores.size),
        "quantiles": [float(q) for q in quantiles],
        "threshold": float(np.quantile(scores, OOD_FALSE_REJECT_RATE)),
        "false_reject_rate": OOD_FALSE_REJECT_RATE,
        **({"semantic_sigma": scoring.semantic_sigma, "reference": reference}
           if reference else {}),
    }


def calibrate_checkpoint(directory: str | Path, holdout: torch.Tensor,
                         train_images: torch.Tensor | None = None) -> dict[str, Any]:
    """Calibrate the checkpoint in ``directory`` (model-range images) and store the result."""
    from .checkpoints import update_calibration

    loaded = load_checkpoint(directory)
    calibration = calibrate_scores(loaded, holdout, train_images=train_images)
    update_calibration(directory, calibration)
    return calibration


def interpret_scores(calibration: dict[str, Any] | None, scores: torch.Tensor | list[float], *,
                     sigma: float, draws: int, seed: int, score: str = "texture"
                     ) -> list[dict[str, Any]]:
    """Percentile among held-out data and the is_ood decision, when the calibration was made
    for the same score with the same sigma, draws and seed (otherwise the numbers are not
    comparable)."""
    values = [float(s) for s in scores]
    if not calibration or (calibration.get("score", "texture"), calibration.get("sigma"),
                           calibration.get("draws"), calibration.get("seed")
                           ) != (score, sigma, draws, seed):
        return [{} for _ in values]
    quantiles = np.asarray(calibration["quantiles"], dtype=np.float64)
    levels = np.linspace(0.0, 100.0, quantiles.size)
    out = []
    for value in values:
        percentile = float(np.interp(value, quantiles, levels, left=0.0, right=100.0))
        out.append({"percentile": round(percentile, 2),
                    "is_ood": bool(value < calibration["threshold"])})
    return out
