"""The declared type and range of every training-config field, checked by pydantic.

A training request's overrides are checked here, field by field, before any config object is
built: a value of the wrong type (a string, a fraction where an integer belongs, a list of the
wrong length, a 400-digit integer) or outside its range is a 422 that names the field.  The
models are generated from model.formats.config's dataclasses, so a field added there is checked by its
type at once; ``RANGES`` gives each field its range, and tests/service/test_overrides.py fails
while a field has none.  Cross-field rules (divisibility, sums of fractions) stay in the
dataclasses' ``validate``; the network's shape is checked by model.formats.netshape.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError,
                      create_model)

from model.formats.config import (DAE_LOSS_WEIGHTINGS, LATENT_INITS, NEGATIVE_AUGMENTATIONS,
                                  PRECISIONS, PRECONDITIONINGS, SCORES,
                                  DataConfig, NetworkConfig, NoiseConfig, SamplerConfig,
                                  ScoringConfig, TrainingConfig)

SECTIONS: dict[str, type] = {"network": NetworkConfig, "noise": NoiseConfig,
                             "sampler": SamplerConfig, "training": TrainingConfig,
                             "data": DataConfig, "scoring": ScoringConfig}

# Absolute bounds: types that cannot overflow anything downstream.  The tighter limits that
# an operator sets (DEBM_MAX_TRAINING_*, DEBM_MAX_GENERATE_STEPS) are checked after these, by
# core.trainconfig, with messages that name the setting.
SEED = (0, 2 ** 31 - 1)
STEPS = (0, 10 ** 9)
COUNT = (1, 10 ** 9)
POSITIVE = ("gt", 0.0, 100.0)  # (bound kind, low, high): gt = exclusive low
UNIT = (0.0, 1.0)
WEIGHT = (0.0, 1e6)
BETA = ("lt1", 0.0, 1.0)  # [0, 1)
SIZE = (1, 1 << 16)

# section -> field -> range.  Integers: (low, high) inclusive; floats: (low, high) inclusive,
# or ("gt", low, high) with an exclusive low, or ("lt1", low, high) with an exclusive high;
# tuples: (item range, min length, max length); strings: max length or a tuple of choices.
RANGES: dict[str, dict[str, Any]] = {
    "network": {"image_size": (4, 1 << 16), "channels": (1, 3), "base_width": SIZE,
                "channel_mults": ((1, 1 << 16), 1, 64), "blocks_per_level": (1, 64),
                "latent_dim": SIZE, "decoder_width": SIZE, "embedding_dim": (2, 1 << 16),
                "sigma_data": POSITIVE, "groups": (1, 1024),
                "preconditioning": PRECONDITIONINGS},
    "noise": {"num_sigmas": COUNT, "sigma_max": POSITIVE, "sigma_min": POSITIVE},
    "sampler": {"steps_latent": STEPS, "steps_pixel": STEPS, "step_size_latent": POSITIVE,
                "step_size_pixel": POSITIVE, "sigma_latent": POSITIVE, "sigma_pixel": POSITIVE,
                "temperature_latent": (0.0, 100.0), "temperature_pixel": (0.0, 100.0),
                "grad_clip": (0.0, 1e9), "clamp_pixels": None, "final_denoise": None,
                "precision": PRECISIONS, "latent_init": LATENT_INITS,
                "annealed_steps_per_level": STEPS, "annealed_levels": STEPS,
                "annealed_step_size": ("gt", 0.0, 1.0)},
    "training": {"batch_size": COUNT, "warmup_steps": (0, 10 ** 9),
                 "iterations": (0, 10 ** 9), "recon_steps": STEPS,
                 "lr": ("gt", 0.0, 10.0), "betas": (BETA, 2, 2),
                 "contrastive_lr": ("gt", 0.0, 10.0), "contrastive_betas": (BETA, 2, 2),
                 "contrastive_weight": WEIGHT, "semantic_contrastive_weight": WEIGHT,
                 "latent_moment_weight": WEIGHT, "energy_penalty": WEIGHT,
                 "grad_clip_norm": (0.0, 1e9), "chain_grad_clip": (0.0, 1e9),
                 "chain_batch_size": COUNT, "semantic_contrastive_lr": ("gt", 0.0, 10.0),
                 "shared_sigma": None, "simultaneous_updates": None, "clamp_chains": None,
                 "dae_loss_weighting": DAE_LOSS_WEIGHTINGS, "precision": PRECISIONS,
                 "steps_latent": STEPS, "steps_pixel": STEPS, "step_size_latent": POSITIVE,
                 "step_size_pixel": POSITIVE, "sigma_latent": POSITIVE,
                 "temperature_latent": (0.0, 100.0), "temperature_pixel": (0.0, 100.0),
                 "contrastive_sigma_min": POSITIVE, "contrastive_sigma_max": POSITIVE,
                 "replay_buffer_size": STEPS, "replay_prob": UNIT,
                 "pixel_replay_size": STEPS, "pixel_replay_fraction": UNIT,
                 "noise_chain_fraction": UNIT, "augmented_chain_fraction": UNIT,
                 "negative_augmentations": (NEGATIVE_AUGMENTATIONS, 0,
                                            len(NEGATIVE_AUGMENTATIONS)),
                 "lr_contrastive_phase": ("gt", 0.0, 10.0), "flip": None, "freeze_dae": None,
                 "decoder_trains_encoder": None,
                 "max_energy": ("gt", 0.0, 1e12), "checkpoint_every": (0, 10 ** 9),
                 "seed": SEED},
    "data": {"dataset": 4096, "holdout_fraction": ("lt1", 0.0, 1.0), "split_seed": SEED},
    "scoring": {"sigma": POSITIVE, "draws": COUNT, "seed": SEED, "score": SCORES,
                "semantic_sigma": POSITIVE},
}
# A field without an entry above is still checked by its type, within these bounds.
FALLBACK = {int: (-(2 ** 31), 2 ** 31 - 1), float: (-1e12, 1e12), str: 256}


def _integral(value: Any) -> Any:
    """JSON has one number type: 3.0 is accepted where an integer belongs, 3.5 is not."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _number(kind: type, spec: Any) -> Any:
    if kind is int:
        low, high = spec
        return Annotated[int, BeforeValidator(_integral), Strict(), Field(ge=low, le=high)]
    if spec and spec[0] == "gt":
        bounds = Field(gt=spec[1], le=spec[2], allow_inf_nan=False)
    elif spec and spec[0] == "lt1":
        bounds = Field(ge=spec[1], lt=spec[2], allow_inf_nan=False)
    else:
        bounds = Field(ge=spec[0], le=spec[1], allow_inf_nan=False)
    return Annotated[float, Strict(), bounds]


def _field_type(hint: Any, spec: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return Annotated[bool, Strict()]
    if hint in (int, float):
        return _number(hint, spec if spec is not None else FALLBACK[hint])
    if hint is str:
        if isinstance(spec, tuple):
            return Literal[spec]
        return Annotated[str, Strict(), Field(max_length=spec or FALLBACK[str])]
    if origin is tuple:
        item_hint = args[0]
        item_spec, low, high = spec if spec is not None else (None, 0, 16)
        if item_hint is str and isinstance(item_spec, tuple):
            item = Literal[item_spec]
        else:
            item = _field_type(item_hint, item_spec)
        if len(args) == 2 and args[1] is not Ellipsis:
            low = high = len(args)
        return Annotated[tuple[item, ...], Field(min_length=low, max_length=high)]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _field_type(inner[0], spec) | None
    if origin is Literal:
        return hint
    # A type this module does not know yet: left to model.formats.config's own checks (never
    # an import error that would stop the API); the RANGES test names the field.
    return Any


def _section_model(name: str, cls: type) -> type[BaseModel]:
    hints = typing.get_type_hints(cls)
    ranges = RANGES.get(name, {})
    fields = {f.name: (_field_type(hints[f.name], ranges.get(f.name)), None)
              for f in dataclasses.fields(cls)}
    return create_model(f"{cls.__name__}Overrides", __config__=ConfigDict(extra="forbid"),
                        **fields)


SECTION_MODELS: dict[str, type[BaseModel]] = {name: _section_model(name, cls)
                                              for name, cls in SECTIONS.items()}


class OverrideError(ValueError):
    """An override of the wrong type or out of range; ``field`` is its dotted name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"overrides.{field}: {message}")
        self.field = field


def check_overrides(overrides: Any) -> dict[str, dict[str, Any]]:
    """Every section and field typed and in range; returns the overrides with JSON's numbers
    normalised (integral floats as ints, lists as tuples), or raises OverrideError."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise OverrideError("", "must be an object of sections")
    checked: dict[str, dict[str, Any]] = {}
    for section, values in overrides.items():
        model = SECTION_MODELS.get(section)
        if model is None:
            raise OverrideError(str(section)[:64], "unknown section; choose from "
                                                   f"{', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise OverrideError(section, "must be an object of settings")
        try:
            parsed = model.model_validate(values)
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in (section, *error["loc"]))
            raise OverrideError(where, error["msg"]) from None
        checked[section] = {key: getattr(parsed, key) for key in values}
    return checked
