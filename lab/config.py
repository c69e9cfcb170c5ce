"""Config dataclass base: strict dict round trips so a typo in a key is an error, not a default.

A config also says what a run computes (`identity`): every field, except those declared with
`setting(...)` as not changing the result (how often a run saves) or as computing nothing at one
value (a loss at weight 0, a connector's section while another connector is chosen). Fingerprints of
saved results are built from it, so a setting added with an inert default leaves them all valid.
"""

from __future__ import annotations

import dataclasses
import difflib
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

    def identity(self) -> dict[str, Any]:
        """`to_dict()` without what does not change the result: fields declared `setting(...,
        identity=False)`, and fields at their declared `inert` value (see the module doc)."""
        plain = dataclasses.asdict(self)
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata.get("identity", True) or ("inert" in f.metadata and value == f.metadata["inert"]):
                continue
            out[f.name] = value.identity() if isinstance(value, Config) else plain[f.name]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, path: str = "") -> Self:
        """`data` as this config; `path` ("model.") names its keys in errors as the user typed them."""
        data = dict(data or {})
        for old, new in cls.RENAMED.items():
            if old in data:
                if new in data:
                    raise ConfigError(f"give {path}{new} only ({path}{old} is its old name)")
                data[new] = data.pop(old)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(_unknown(path, unknown, sorted(fields)))
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            sub = config_type(hints[name], value)
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value, f"{path}{name}.")
            elif sub is not None and value is not None and not isinstance(value, Config):
                raise ConfigError(f"config section {path}{name} must be a mapping of keys, got {value!r}")
            else:
                value = _check_type(f"{path}{name}", hints[name], value)
            kwargs[name] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def setting(default: Any = dataclasses.MISSING, *, inert: Any = dataclasses.MISSING, identity: bool = True, **kw):
    """A dataclass field that declares how it enters `Config.identity`: `identity=False` for what
    never changes a result (how often a run saves, how many processes load data); `inert=v` for
    a value at which the field computes nothing, so it is left out there (a loss weight of 0, the
    section of a connector that is not chosen). Declare every setting added with a default `inert`
    at that default: saved results then stay valid, and only runs that set it differ."""
    meta = {"identity": identity} | ({} if inert is dataclasses.MISSING else {"inert": inert})
    return dataclasses.field(default=default, metadata=meta, **kw)


def _unknown(path: str, unknown: list[str], allowed: list[str]) -> str:
    """One line per typo: the dotted key as typed, and the closest valid key where one is close."""
    parts = []
    for key in unknown:
        near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        parts.append(f"{path}{key}" + (f" (did you mean {path}{near[0]}?)" if near else ""))
    where = f"{path.rstrip('.')} takes" if path else "allowed:"
    return f"unknown config key {', '.join(parts)}; {where} {', '.join(allowed)}"


def config_type(hint: Any, value: Any = None) -> type[Config] | None:
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


def _check_type(key: str, hint: Any, value: Any) -> Any:
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
        raise ConfigError(f"{key} must be {names}, got {value!r} ({type(value).__name__})")
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
