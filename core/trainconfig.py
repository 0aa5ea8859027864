"""Training requests -> a validated ExperimentConfig.

Used twice: by the API, to answer 422 before anything is queued, and by the training worker,
which re-validates what it reads from the job record.  model.formats.config is pure Python
(no torch), so the API may import it.

The checks, in order: every override's type and range (core.override_schema), the
config's own cross-field rules, the limits from Settings, the network's shapes and size
(model.formats.netshape walks model.networks without torch) and, when the dataset is known, the
memory the job would claim on a worker.  Only the errors a bad override can raise (the
override schema's OverrideError and the config's ConfigError) become TrainingRequestError;
anything else is our bug and propagates as one (a 500 and a traceback in the log), never
hidden as "invalid overrides".
"""

from __future__ import annotations

from typing import Any

from model.formats.errors import UserError


class TrainingRequestError(UserError, ValueError):
    """The preset, overrides or limits do not allow this job; the message says why."""


def training_limits(settings) -> dict[str, int]:
    """The keyword arguments of ``build_training_config`` that come from Settings."""
    return {"max_steps": settings.max_training_steps,
            "checkpoint_every": settings.train_checkpoint_every,
            "max_image_size": settings.max_training_image_size,
            "max_batch": settings.max_training_batch,
            "max_width": settings.max_training_width,
            "max_chain_steps": settings.max_generate_steps,
            "memory_budget": settings.worker_memory_bytes}


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
                          max_chain_steps: int = 2000, memory_budget: int | None = None,
                          dataset_images: int | None = None):
    """The job's config, or TrainingRequestError naming the field.  ``dataset_images`` (the
    dataset's image count, when known) enables the memory check against ``memory_budget``."""
    from model.formats.config import ConfigError
    from model.formats.netshape import network_shape, training_memory
    from model.formats.presets import preset

    from .override_schema import OverrideError, check_overrides

    if isinstance(overrides, dict) and "preset" in overrides:
        raise TrainingRequestError("choose the preset with the 'preset' field")
    try:
        sections = check_overrides(overrides)
    except OverrideError as exc:
        raise TrainingRequestError(str(exc)) from None
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
    total = config.training.warmup_steps + config.training.iterations
    if total < 1:
        raise TrainingRequestError("warmup_steps + iterations must be at least 1")
    if total > max_steps:
        raise TrainingRequestError(f"warmup_steps + iterations = {total} exceeds the limit of "
                                   f"{max_steps} steps per job (DEBM_MAX_TRAINING_STEPS)")
    _check_sizes(config, max_image_size=max_image_size, max_batch=max_batch,
                 max_width=max_width, max_chain_steps=max_chain_steps)
    try:
        network_shape(config.network)
    except ConfigError as exc:
        raise TrainingRequestError(str(exc)) from None
    if memory_budget is not None and dataset_images is not None:
        need = training_memory(config, dataset_images)
        if need["total"] > memory_budget:
            parts = ", ".join(f"{k} {v / 2 ** 20:.0f}" for k, v in need.items() if k != "total")
            raise TrainingRequestError(
                f"this job would need about {need['total'] / 2 ** 20:.0f} MiB on a worker "
                f"({parts} MiB: {dataset_images} images at {config.network.channels}x"
                f"{config.network.image_size}x{config.network.image_size}); the budget is "
                f"{memory_budget / 2 ** 20:.0f} MiB (DEBM_WORKER_MEMORY_BYTES)")
    return config


def dataset_budget(config, memory_budget: int) -> int:
    """Bytes left for the dataset itself once the rest of the job's estimate is counted: the
    loader refuses a dataset larger than this before decoding it."""
    from model.formats.netshape import training_memory

    return memory_budget - training_memory(config, 0)["total"]
