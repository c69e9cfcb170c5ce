"""Config dataclass base: strict dict round trips so a typo in a key is an error, not a default."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, Self


class ConfigError(ValueError):
    """A config key or value that lab does not accept."""


@dataclasses.dataclass
class Config:
    """Base for every module config. Subclasses are plain dataclasses with typed defaults."""

    # Keys renamed since run folders were first written: {old: new}. An old key is read as the new
    # one, so older run folders still load; giving both is an error.
    RENAMED: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Self:
        data = dict(data or {})
        for old, new in cls.RENAMED.items():
            if old in data:
                if new in data:
                    raise ConfigError(f"{cls.__name__}: give {new!r} only ({old!r} is its old name)")
                data[new] = data.pop(old)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown} for {cls.__name__}; allowed: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            sub = _config_type(hints[name], value)
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif sub is not None and value is not None and not isinstance(value, Config):
                raise ConfigError(f"config section {cls.__name__}.{name} must be a mapping of keys, got {value!r}")
            else:
                value = _check_type(cls.__name__, name, hints[name], value)
            kwargs[name] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def _config_type(hint: Any, value: Any = None) -> type[Config] | None:
    """The Config subclass inside a hint such as `QFormerConfig | None`, if any. Where the hint
    names several (`LLMConfig | OPTConfig`), the value's "family" key picks the one whose
    `family` default it is; without that key, the first."""
    candidates = [c for c in typing.get_args(hint) or (hint,) if isinstance(c, type) and issubclass(c, Config)]
    if len(candidates) > 1 and isinstance(value, dict) and "family" in value:
        families = {c.__dataclass_fields__["family"].default: c for c in candidates}
        if value["family"] not in families:
            raise ConfigError(f"unknown family {value['family']!r}; choose from {sorted(families)}")
        return families[value["family"]]
    return candidates[0] if candidates else None


def _check_type(owner: str, name: str, hint: Any, value: Any) -> Any:
    """Plain scalars must have their field's type (an int is accepted for a float)."""
    origin = typing.get_origin(hint)
    if origin not in (None, typing.Union, types.UnionType):
        return value  # containers (list[str]) are checked by the config's own __post_init__
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return value
    scalars = [t for t in (bool, int, float, str) if t in allowed]
    for t in scalars:
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, t) and not (t is int and isinstance(value, bool)):
            return value
    if scalars:
        names = " or ".join(t.__name__ for t in scalars)
        raise ConfigError(f"{owner}.{name} must be {names}, got {value!r} ({type(value).__name__})")
    return value


def check_range(name: str, value: float, low: float | None = None, high: float | None = None, *, above=False) -> None:
    """`low <= value <= high` (`low < value` when `above`), or a ConfigError naming the key."""
    too_low = low is not None and (value <= low if above else value < low)
    if too_low or (high is not None and value > high):
        lo = "" if low is None else f"{'>' if above else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        raise ConfigError(f"{name}={value!r} is out of range; it must be {' and '.join(x for x in (lo, hi) if x)}")


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")
