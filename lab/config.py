"""Config dataclass base: strict dict round trips so a typo in a key is an error, not a default."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Self


class ConfigError(ValueError):
    """A config key or value that lab does not accept."""


@dataclasses.dataclass
class Config:
    """Base for every module config. Subclasses are plain dataclasses with typed defaults."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Self:
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown} for {cls.__name__}; allowed: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            sub = _config_type(hints[name])
            kwargs[name] = sub.from_dict(value) if sub is not None and isinstance(value, dict) else value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def _config_type(hint: Any) -> type[Config] | None:
    """The Config subclass inside a hint such as `QFormerConfig | None`, if any."""
    candidates = typing.get_args(hint) or (hint,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, Config):
            return c
    return None


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")
