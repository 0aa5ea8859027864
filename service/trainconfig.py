"""Training requests -> a validated ExperimentConfig.

Used twice: by the API, to answer 422 before anything is queued, and by the training worker,
which re-validates what it reads from the job record.  model.config is pure Python (no torch),
so the API may import it.
"""

from __future__ import annotations

import math
from typing import Any


class TrainingRequestError(ValueError):
    """The preset, overrides or limits do not allow this job; the message says why."""


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise TrainingRequestError(f"{where} must be a finite number")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{where}[{i}]")


def build_training_config(*, preset_name: str, overrides: dict[str, Any] | None,
                          seed: int | None, dataset: str, max_steps: int,
                          checkpoint_every: int):
    from model.config import ConfigError, preset

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
    return config
