"""Checkpoints: safetensors weights + one JSON document.  Nothing is ever unpickled.

A checkpoint is a directory:

    checkpoint.json                  format, full ExperimentConfig, step, metadata,
                                     calibration, optimizer layout, file names + SHA-256
    model-<step>.safetensors         weights of both networks
    state-<step>.safetensors         optimizer moments, RNG states, replay buffer (resume only)
    latent-prior-<step>.safetensors  optional: where latent chains start (model/latent_prior.py)

checkpoint.json is the commit point: weight files are written first under new names, then the
JSON is replaced atomically (temp file + fsync + rename), then files it no longer names are
removed.  A crash at any moment leaves either the old or the new checkpoint, never a mix, and
the SHA-256 of every file is checked on load so a truncated or corrupt file is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as serialize_tensors

from .formats.config import ConfigError, ExperimentConfig
from .latent_prior import LatentPrior
from .formats.files import atomic_write_bytes, atomic_write_json
from .formats.manifest import (FORMAT, FORMAT_VERSION, MANIFEST,
                               CheckpointError, checked_file, read_manifest,
                               sha256_file)
from .networks import DenoisingEBM

__all__ = ["CheckpointError", "LoadedCheckpoint", "attach_latent_prior", "export_checkpoint",
           "load_checkpoint", "load_training_state", "read_manifest", "save_checkpoint",
           "update_calibration", "update_config_section"]


@dataclass
class LoadedCheckpoint:
    model: DenoisingEBM
    config: ExperimentConfig
    step: int
    metadata: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    path: Path | None = None
    inference: Any = None  # model.pipeline.InferenceOptions once prepared for serving
    latent_prior: LatentPrior | None = None  # where two_stage's latent chains may start
    # Traced model.energies.ChunkScorer per reading ({"texture": ..., "semantic": ...}),
    # once prepared for serving (model.pipeline.prepare_for_inference).
    scoring_chunks: dict[str, Any] | None = None


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Serialise in memory, then write with plain file I/O, so a full disk or a read-only
    directory surfaces as an OSError with its errno (safetensors' own writer hides it)."""
    atomic_write_bytes(path, serialize_tensors({k: v.detach().cpu().contiguous()
                                                for k, v in tensors.items()}))


def save_checkpoint(directory: str | Path, *, model: DenoisingEBM, config: ExperimentConfig,
                    step: int, metadata: dict[str, Any] | None = None,
                    calibration: dict[str, Any] | None = None,
                    training_state: tuple[dict[str, torch.Tensor], dict] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    weights = f"model-{step:08d}.safetensors"
    _save_tensors(model.state_dict(), directory / weights)
    files[weights] = sha256_file(directory / weights)
    document: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
        "step": int(step), "metadata": metadata or {}, "calibration": calibration,
        "weights": weights, "training_state": None,
    }
    if training_state is not None:
        tensors, meta = training_state
        state_name = f"state-{step:08d}.safetensors"
        _save_tensors(tensors, directory / state_name)
        files[state_name] = sha256_file(directory / state_name)
        document["training_state"] = {"file": state_name, **meta}
    document["files"] = files
    atomic_write_json(directory / MANIFEST, document)
    # Only now are older weight files unreferenced.
    for stale in directory.glob("*.safetensors"):
        if stale.name not in files:
            stale.unlink(missing_ok=True)
    return directory


def _verified_tensors(directory: Path, name: str, document: dict[str, Any]
                      ) -> dict[str, torch.Tensor]:
    path = checked_file(directory, name, document)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: {name} is unreadable ({exc})") from None


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu"
                    ) -> LoadedCheckpoint:
    """Rebuild the model from the stored config and load its verified weights."""
    directory = Path(directory)
    document = read_manifest(directory)
    try:
        config = ExperimentConfig.from_dict(document["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{directory}: invalid stored config ({exc})") from None
    tensors = _verified_tensors(directory, document.get("weights"), document)
    model = DenoisingEBM(config.network)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{directory}: weights do not fit the stored config "
                              f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    # Inference only needs gradients with respect to inputs (Langevin), never weights.
    model.to(device).eval().requires_grad_(False)
    prior = None
    info = document.get("latent_prior")
    if info:
        try:
            prior = LatentPrior.from_tensors(_verified_tensors(directory, info.get("file"),
                                                               document))
        except ValueError as exc:
            raise CheckpointError(f"{directory}: {exc}") from None
        if prior.dim != config.network.latent_dim:
            raise CheckpointError(f"{directory}: the latent prior has {prior.dim} dimensions, "
                                  f"the network {config.network.latent_dim}")
        prior = prior.to(device)
    return LoadedCheckpoint(model=model, config=config, step=int(document.get("step", 0)),
                            metadata=document.get("metadata") or {},
                            calibration=document.get("calibration"), path=directory,
                            latent_prior=prior)


def load_training_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    directory = Path(directory)
    document = read_manifest(directory)
    info = document.get("training_state")
    if not info:
        raise CheckpointError(f"{directory}: holds no training state to resume from")
    tensors = _verified_tensors(directory, info["file"], document)
    meta = {k: v for k, v in info.items() if k != "file"}
    return tensors, meta


def export_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Copy a checkpoint for serving or shipping: weights, config, metadata and calibration,
    without the resumable training state (optimizer moments are most of its size).  A
    warm-up baseline sub-checkpoint is exported alongside, so evaluation still finds it."""
    source, target = Path(source), Path(target)
    document = read_manifest(source)
    if target.exists() and any(target.iterdir()):
        raise CheckpointError(f"{target}: exists and is not empty")
    kept = [checked_file(source, document.get("weights"), document)]
    if document.get("latent_prior"):
        kept.append(checked_file(source, document["latent_prior"].get("file"), document))
    target.mkdir(parents=True, exist_ok=True)
    for path in kept:
        atomic_write_bytes(target / path.name, path.read_bytes())
    exported = {**document, "training_state": None,
                "files": {path.name: document["files"][path.name] for path in kept}}
    atomic_write_json(target / MANIFEST, exported)
    warmup = (document.get("metadata") or {}).get("warmup_checkpoint")
    if isinstance(warmup, str) and "/" not in warmup and (source / warmup / MANIFEST).exists():
        export_checkpoint(source / warmup, target / warmup)
    return target


def update_sampler_defaults(directory: str | Path, overrides: dict[str, Any], *,
                            note: str | None = None) -> dict[str, Any]:
    """Change the generation defaults a checkpoint carries (``config.sampler``), in place.

    Sampler settings do not touch the weights, the scoring or the calibration, so they can be
    retuned after training without a new run.  The change is validated against the full
    config and appended to ``metadata.sampler_updates`` (old and new values, and ``note``,
    e.g. the command), so the checkpoint still says how its defaults came about.  Returns the
    new sampler section."""
    return update_config_section(directory, "sampler", overrides, note=note)


def update_config_section(directory: str | Path, section: str, overrides: dict[str, Any], *,
                          note: str | None = None) -> dict[str, Any]:
    """Change one section of a checkpoint's config in place (``sampler`` or ``scoring``: the
    settings that do not touch the weights), validated against the full config and recorded
    in ``metadata.<section>_updates``; returns the new section.  A scoring change makes the
    calibration stale: calibrate again (``debm calibrate`` does both)."""
    directory = Path(directory)
    document = read_manifest(directory)
    config = ExperimentConfig.from_dict(document["config"])
    updated = config.replace(**{section: overrides})  # unknown names and bad values raise
    old = config.to_dict()[section]
    new = updated.to_dict()[section]
    changed = {k: {"old": old[k], "new": new[k]} for k in overrides if old[k] != new[k]}
    document["config"] = updated.to_dict()
    metadata = dict(document.get("metadata") or {})
    history = list(metadata.get(f"{section}_updates") or [])
    history.append({"changed": changed, **({"note": note} if note else {})})
    metadata[f"{section}_updates"] = history
    document["metadata"] = metadata
    atomic_write_json(directory / MANIFEST, document)
    return new


def attach_latent_prior(directory: str | Path, prior: LatentPrior, report: dict[str, Any]
                        ) -> None:
    """Store a fitted latent prior with the checkpoint's weights (file first, then the
    manifest).  It belongs to these weights: the next save_checkpoint of a continued run
    writes a manifest without it, and drops the file."""
    directory = Path(directory)
    document = read_manifest(directory)
    name = f"latent-prior-{int(document.get('step', 0)):08d}.safetensors"
    _save_tensors(prior.tensors(), directory / name)
    old = (document.get("latent_prior") or {}).get("file")
    files = {k: v for k, v in (document.get("files") or {}).items() if k != old}
    files[name] = sha256_file(directory / name)
    document["files"] = files
    document["latent_prior"] = {"file": name, **report}
    atomic_write_json(directory / MANIFEST, document)
    if old and old != name:
        (directory / old).unlink(missing_ok=True)


def update_calibration(directory: str | Path, calibration: dict[str, Any]) -> None:
    """Attach an OOD calibration to an existing checkpoint (atomic manifest rewrite)."""
    directory = Path(directory)
    document = read_manifest(directory)
    document["calibration"] = calibration
    atomic_write_json(directory / MANIFEST, document)
