"""Training requests -> a validated ExperimentConfig.

Used twice: by the API, to answer 422 before anything is queued, and by the training worker,
which re-validates what it reads from the job record.  model.formats.config is pure Python
(no torch), so the API may import it.
"""

from __future__ import annotations

import math
from typing import Any

from model.formats.errors import UserError


class TrainingRequestError(UserError, ValueError):
    """The preset, overrides or limits do not allow this job; the message says why."""


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise TrainingRequestError(f"{where} must be a finite number")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{where}[{i}]")


def training_limits(settings) -> dict[str, int]:
    """The keyword arguments of ``build_training_config`` that come from Settings."""
    return {"max_steps": settings.max_training_steps,
            "checkpoint_every": settings.train_checkpoint_every,
            "max_image_size": settings.max_training_image_size,
            "max_batch": settings.max_training_batch,
            "max_width": settings.max_training_width,
            "max_chain_steps": settings.max_generate_steps}


def _check_sizes(config, *, max_image_size: int, max_batch: int, max_width: int,
                 max_chain_steps: int) -> None:
    """Bound what one job can claim on a worker (memory, time per step), so that no request
    reaches a worker in a form that crashes it (an out-of-memory kill takes the process)."""
    net, training, sampler = config.network, config.training, config.sampler
    limits = [
        ("network.image_size", net.image_size, max_image_size, "DEBM_MAX_TRAINING_IMAGE_SIZE"),
        ("network.base_width x max(channel_mults)",
         net.base_width * max(net.channel_mults), max_width, "DEBM_MAX_TRAINING_WIDTH"),
        ("network.decoder_width", net.decoder_width, max_width, "DEBM_MAX_TRAINING_WIDTH"),
        ("network.latent_dim", net.latent_dim, max_width, "DEBM_MAX_TRAINING_WIDTH"),
        ("network.embedding_dim", net.embedding_dim, max_width, "DEBM_MAX_TRAINING_WIDTH"),
        ("network.channel_mults (levels)", len(net.channel_mults), 8, "a fixed limit"),
        ("network.blocks_per_level", net.blocks_per_level, 8, "a fixed limit"),
        ("training.batch_size", training.batch_size, max_batch, "DEBM_MAX_TRAINING_BATCH"),
        ("training.chain_batch_size", training.chain_batch_size, max_batch,
         "DEBM_MAX_TRAINING_BATCH"),
        ("training.recon_steps", training.recon_steps, max_chain_steps,
         "DEBM_MAX_GENERATE_STEPS"),
        ("training.steps_latent", training.steps_latent, max_chain_steps,
         "DEBM_MAX_GENERATE_STEPS"),
        ("training.steps_pixel", training.steps_pixel, max_chain_steps,
         "DEBM_MAX_GENERATE_STEPS"),
        ("training.replay_buffer_size", training.replay_buffer_size, 100 * max_batch,
         "100 x DEBM_MAX_TRAINING_BATCH"),
        ("training.pixel_replay_size", training.pixel_replay_size, 100 * max_batch,
         "100 x DEBM_MAX_TRAINING_BATCH"),
        ("sampler.steps_latent", sampler.steps_latent, max_chain_steps,
         "DEBM_MAX_GENERATE_STEPS"),
        ("sampler.steps_pixel", sampler.steps_pixel, max_chain_steps,
         "DEBM_MAX_GENERATE_STEPS"),
        ("sampler.annealed_levels x annealed_steps_per_level",
         sampler.annealed_levels * sampler.annealed_steps_per_level, max_chain_steps,
         "DEBM_MAX_GENERATE_STEPS"),
        ("noise.num_sigmas", config.noise.num_sigmas, 10_000, "a fixed limit"),
        ("scoring.draws", config.scoring.draws, 64, "a fixed limit"),
    ]
    for name, value, limit, source in limits:
        if value > limit:
            raise TrainingRequestError(f"{name} = {value} exceeds the limit of {limit} "
                                       f"({source})")


def build_training_config(*, preset_name: str, overrides: dict[str, Any] | None,
                          seed: int | None, dataset: str, max_steps: int,
                          checkpoint_every: int, max_image_size: int = 256,
                          max_batch: int = 1024, max_width: int = 1024,
                          max_chain_steps: int = 2000):
    from model.formats.config import ConfigError, preset

    sections: dict[str, dict[str, Any]] = {}
    for section, values in (overrides or {}).items():
        if not isinstance(values, dict):
            raise TrainingRequestError(f"overrides.{section} must be an object of settings")
        for key, value in values.items():
            _check_finite(value, f"overrides.{section}.{key}")
        sections[section] = dict(values)
    if "preset" in sections:
        raise TrainingRequestError("choose the preset with the 'preset' field")
    if "dataset" in sections.get("data", {}):
        raise TrainingRequestError("choose the dataset with the 'dataset' field, not "
                                   "overrides.data.dataset")
    sections.setdefault("data", {})["dataset"] = dataset
    if seed is not None:
        sections.setdefault("training", {})["seed"] = seed
    try:
        config = preset(preset_name).replace(**sections)
        if config.training.checkpoint_every == 0:
            # A job always checkpoints periodically so that a redelivered task resumes.
            config = config.replace(training={"checkpoint_every": checkpoint_every})
    except ConfigError as exc:
        raise TrainingRequestError(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise TrainingRequestError(f"invalid override: {exc}") from None
    total = config.training.warmup_steps + config.training.iterations
    if total < 1:
        raise TrainingRequestError("warmup_steps + iterations must be at least 1")
    if total > max_steps:
        raise TrainingRequestError(f"warmup_steps + iterations = {total} exceeds the limit of "
                                   f"{max_steps} steps per job (DEBM_MAX_TRAINING_STEPS)")
    _check_sizes(config, max_image_size=max_image_size, max_batch=max_batch,
                 max_width=max_width, max_chain_steps=max_chain_steps)
    return config
