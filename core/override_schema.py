"""The API's schema of training overrides, derived from model.formats.config's declarations.

A training request's overrides are checked here, field by field, before any config object is
built: a value of the wrong type (a string, a fraction where an integer belongs, a list of the
wrong length, a 400-digit integer) or outside its declared range is a 422 that names the field.
Each field's type, range and meaning come from its one declaration, ``setting(...)`` in
model/formats/config.py (model/formats/settingspec.py); the meaning becomes the field's
OpenAPI description.  tests/service/test_overrides.py proves this schema and the dataclasses'
``validate()`` agree on random values.  Cross-field rules (divisibility, sums of fractions)
stay in ``validate``; the network's shape is checked by model.formats.netshape.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict,
                      ValidationError, create_model)

from model.formats.config import SECTIONS
from model.formats.settingspec import Spec, field_specs


def _integral(value: Any) -> Any:
    """JSON has one number type: 3.0 is accepted where an integer belongs, 3.5 is not."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _one_of(choices: tuple) -> Any:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be {' or '.join(str(c) for c in choices)}")
        return value
    return AfterValidator(check)


def _number(kind: type, spec: Spec) -> Any:
    bounds = Field(ge=spec.ge, gt=spec.gt, le=spec.le, lt=spec.lt)
    if kind is int:
        if spec.choices is not None:  # the choices, checked and shown as an enum
            return Annotated[int, Strict(), _one_of(spec.choices),
                             Field(json_schema_extra={"enum": list(spec.choices)}),
                             BeforeValidator(_integral)]
        return Annotated[int, Strict(), bounds, BeforeValidator(_integral)]
    return Annotated[float, Strict(), bounds, Field(allow_inf_nan=False)]


def field_type(hint: Any, spec: Spec) -> Any:
    """The pydantic type of one declared field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return Annotated[bool, Strict()]
    if hint in (int, float):
        return _number(hint, spec)
    if hint is str:
        if spec.choices is not None:
            return Literal[spec.choices]
        return Annotated[str, Strict(), Field(max_length=spec.max_length)]
    if origin is tuple:
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        low, high = (len(args), len(args)) if fixed else (spec.min_length, spec.max_length)
        item = field_type(args[0], Spec(spec.meaning, ge=spec.ge, gt=spec.gt, le=spec.le,
                                        lt=spec.lt, choices=spec.choices))
        return Annotated[tuple[item, ...], Field(min_length=low, max_length=high)]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return field_type(inner[0], spec) | None
    raise TypeError(f"no override schema for type {hint!r}")  # a new kind of setting


def _section_model(cls: type) -> type[BaseModel]:
    fields = {name: (field_type(hint, spec),
                     Field(None, description=f"{spec.meaning} (default {default!r})"))
              for name, hint, spec, default in field_specs(cls)}
    return create_model(f"{cls.__name__}Overrides", __config__=ConfigDict(extra="forbid"),
                        __doc__=f"Overrides of {cls.__name__}; unset fields keep the preset's "
                                "value.", **fields)


SECTION_MODELS: dict[str, type[BaseModel]] = {name: _section_model(cls)
                                              for name, cls in SECTIONS.items()}


def overrides_json_schema() -> dict[str, Any]:
    """The overrides object for OpenAPI: one property per section, each field described."""
    properties = {}
    for name, model in SECTION_MODELS.items():
        schema = model.model_json_schema()
        schema.pop("title", None)
        properties[name] = schema
    return {"properties": properties, "additionalProperties": False}


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
