"""One declaration per config setting: its type, default, range and one-line meaning.

A config field is written once, in model/formats/config.py, as
``lr: float = setting(5e-5, "Adam lr of the reconstruction losses", gt=0, le=10)``.
Everything else is derived from that declaration:

- ``check_declared(section)``: the per-field part of each section's ``validate()``;
- core/override_schema.py: the API's pydantic override schema, with the meaning as the OpenAPI
  description of each field;
- ``debm set-sampler --help``: the list of sampler settings with their ranges;
- docs/CONFIG.md: the settings table (``python -m model.formats.config > docs/CONFIG.md``;
  tests/model/test_settingspec.py fails while the file is out of date).

Adding a setting is one edit: a field with ``setting(...)``.  Rules between fields (sums of
fractions, divisibility) stay in each section's ``validate()``.  Pure Python: no torch and no
pydantic, so the API and a client-only install can import it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import UserError

SPEC_KEY = "debm_setting"


@dataclass(frozen=True)
class Spec:
    """What a field may hold, beyond its type.  Numbers: bounds (``gt``/``ge`` low,
    ``lt``/``le`` high); strings and integers: ``choices``; strings: ``max_length``; tuples:
    ``min_length``/``max_length`` items, each item checked against the bounds or choices."""

    meaning: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    min_length: int = 0
    max_length: int | None = None

    def bounds_text(self) -> str:
        """The range as a reader writes it: ``(0, 10]``, ``[0, 1]``, ``1 or 3``."""
        if self.choices is not None:
            return " or ".join(str(c) for c in self.choices)
        if self.ge is None and self.gt is None and self.le is None and self.lt is None:
            return ""
        low = f"[{self.ge:g}" if self.ge is not None else (
            f"({self.gt:g}" if self.gt is not None else "(-inf")
        high = f"{self.le:g}]" if self.le is not None else (
            f"{self.lt:g})" if self.lt is not None else "inf)")
        return f"{low}, {high}"


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown or out of range."""


def setting(default: Any, meaning: str, **bounds: Any) -> Any:
    """A dataclass field with its declaration; ``bounds`` are Spec's keywords."""
    return dataclasses.field(default=default, metadata={SPEC_KEY: Spec(meaning, **bounds)})


@functools.lru_cache(maxsize=None)
def field_specs(cls: type) -> tuple[tuple[str, Any, Spec, Any], ...]:
    """(name, type hint, Spec, default) of every declared field of a config section (once per
    class: resolving the annotations is the slow part of validate())."""
    hints = typing.get_type_hints(cls)
    out = []
    for item in dataclasses.fields(cls):
        spec = item.metadata.get(SPEC_KEY)
        if spec is None:
            raise TypeError(f"{cls.__name__}.{item.name} is not declared with setting()")
        out.append((item.name, hints[item.name], spec, item.default))
    return tuple(out)


def type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return f"{len(args)} x {type_name(args[0])}"
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return f"{type_name(inner[0])} or null"
    return getattr(hint, "__name__", str(hint))


def _check_number(name: str, kind: type, spec: Spec, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    finite = not isinstance(value, float) or math.isfinite(value)
    if spec.gt == 0 and not (finite and value > 0 and (spec.le is None or value <= spec.le)):
        raise ConfigError(f"{name} must be a positive finite number in {spec.bounds_text()}, "
                          f"got {value}")
    if not finite:
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if spec.choices is not None:
        if value not in spec.choices:
            raise ConfigError(f"{name} must be {spec.bounds_text()}, got {value}")
        return
    inside = ((spec.ge is None or value >= spec.ge) and (spec.gt is None or value > spec.gt)
              and (spec.le is None or value <= spec.le) and (spec.lt is None or value < spec.lt))
    if not inside:
        if spec.ge is not None and value < spec.ge:
            raise ConfigError(f"{name} must be >= {spec.ge:g} (range {spec.bounds_text()}), "
                              f"got {value}")
        raise ConfigError(f"{name} must lie in {spec.bounds_text()}, got {value}")


def check_value(name: str, hint: Any, spec: Spec, value: Any) -> None:
    """Raise ConfigError unless ``value`` has the declared type and lies in its range."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: None or an X
        if value is None:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    elif hint in (int, float):
        _check_number(name, hint, spec, value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{name} must be one of {list(spec.choices)}, got {value!r}")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise ConfigError(f"{name} must be at most {spec.max_length} characters")
    elif origin is tuple:
        _check_tuple(name, args, spec, value)
    else:  # pragma: no cover - a type this module does not know: its test names the field
        raise TypeError(f"{name}: no check for type {hint!r}")


def _check_tuple(name: str, args: tuple, spec: Spec, value: Any) -> None:
    if not isinstance(value, (tuple, list)):
        raise ConfigError(f"{name} must be a list, got {value!r}")
    fixed = not (len(args) == 2 and args[1] is Ellipsis)
    low, high = (len(args), len(args)) if fixed else (spec.min_length, spec.max_length)
    if len(value) < low or (high is not None and len(value) > high):
        count = f"{low}" if low == high else f"{low} to {high}"
        raise ConfigError(f"{name} must have {count} items, got {len(value)}")
    item_spec = dataclasses.replace(spec, min_length=0, max_length=None)
    for item in value:
        if args[0] is str and spec.choices is not None and item not in spec.choices:
            raise ConfigError(f"unknown {name} {item!r}; choose from {list(spec.choices)}")
        check_value(name, args[0], item_spec, item)


def check_declared(section: Any, name: str) -> None:
    """Every field of a config section (called ``name``: training, sampler, ...) against its
    declaration; its validate() runs this first.  Raises ConfigError naming the field as
    ``section.field``."""
    for field, hint, spec, _ in field_specs(type(section)):
        check_value(f"{name}.{field}", hint, spec, getattr(section, field))


def settings_table(sections: dict[str, type]) -> str:
    """The Markdown table of every setting, for docs/CONFIG.md."""
    lines = ["# Config settings", "",
             "Generated from model/formats/config.py by "
             "`python -m model.formats.config > docs/CONFIG.md`; do not edit by hand.",
             "Each setting is an override of `debm train --set SECTION.NAME=VALUE`, of "
             "`POST /train`'s `overrides`, and (section `sampler`) of `debm set-sampler`.", ""]
    for section, cls in sections.items():
        lines += [f"## {section}", "", "| setting | type | default | range | meaning |",
                  "|---|---|---|---|---|"]
        for name, hint, spec, default in field_specs(cls):
            shown = default if not isinstance(default, tuple) else list(default)
            lines.append(f"| `{name}` | {type_name(hint)} | `{shown}` | "
                         f"{spec.bounds_text()} | {spec.meaning} |")
        lines.append("")
    return "\n".join(lines)


def parse_set(pairs: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Command-line overrides: ``training.lr=1e-4 network.base_width=64`` ->
    ``{"training": {"lr": 1e-4}, "network": {"base_width": 64}}`` (values as JSON when they
    parse, else strings; `debm train --set`, `debm remote train --set`, `debm set-sampler`)."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set expects SECTION.NAME=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out
