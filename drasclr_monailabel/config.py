"""Typed configuration: YAML files and ``key=value`` overrides validated against dataclasses.

Every recipe (pretraining, app defaults) is a tree of dataclasses. Loading checks every key
against the dataclass fields and every value against the field's type, so a typo such as
``optim.lr_rate`` fails at start-up with the bad key named, not hours later.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from drasclr_monailabel.errors import ConfigError

T = TypeVar("T")


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``schema`` from defaults, then a YAML file, then ``dotted.key=value`` overrides.

    Raises:
        ConfigError: unreadable YAML, an unknown key, or a value of the wrong type.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(path, f"cannot be read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(path, f"is not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(path, "must hold a mapping of keys to values at the top level")
        data = loaded or {}
    for override in overrides or []:
        key, value = parse_override(override)
        _set_dotted(data, key, value)
        source = f"{source} + overrides" if "overrides" not in source else source
    return from_mapping(schema, data, source)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value`` and parse ``value`` as YAML (so ``0.1`` is a float, ``true`` a bool)."""
    if "=" not in text:
        raise ConfigError("--set", f"'{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def from_mapping(schema: type[T], data: Mapping[str, Any], source: str, prefix: str = "") -> T:
    """Instantiate dataclass ``schema`` from ``data``, naming the first unknown or ill-typed key."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, f"'{prefix.rstrip('.') or '<top>'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    hints = get_type_hints(schema)
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(source, f"unknown key '{prefix}{unknown[0]}' (known keys here: {known})")
    kwargs = {name: coerce(hints[name], value, source, f"{prefix}{name}") for name, value in data.items()}
    try:
        return schema(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(source, f"{prefix.rstrip('.') or 'config'}: {exc}") from None


def coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    """Check ``value`` against the type ``hint``; strings are parsed where the hint asks for it.

    Accepts what a YAML file or a MONAI Label ``--conf`` string can carry: ``"3"`` for an int,
    ``"true"`` for a bool, a comma-separated string for a list of str.
    """
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, source, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, source, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(source, f"'{key}' must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin in (list, tuple):
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(source, f"'{key}' must be a list, got {value!r}")
        args = get_args(hint)
        item_hint = args[0] if args else Any
        coerced = [coerce(item_hint, v, source, f"{key}[{i}]") for i, v in enumerate(items)]
        return tuple(coerced) if origin is tuple else coerced
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(source, f"'{key}' must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        return _to_bool(value, source, key)
    if hint is int:
        return _to_number(int, value, source, key)
    if hint is float:
        return _to_number(float, value, source, key)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(source, f"'{key}' must be a string, got {value!r}")
        return str(value)
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(source, f"'{key}' must be a path, got {value!r}")
        return Path(value)
    raise ConfigError(source, f"'{key}' has an unsupported type {hint}")


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (paths as strings), e.g. to save beside a checkpoint."""
    def convert(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(dataclasses.asdict(config))


def _to_bool(value: Any, source: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise ConfigError(source, f"'{key}' must be true or false, got {value!r}")


def _to_number(kind: type, value: Any, source: str, key: str) -> Any:
    if isinstance(value, bool):
        raise ConfigError(source, f"'{key}' must be a number, got {value!r}")
    try:
        number = kind(float(value)) if kind is float else kind(str(value).strip()) if isinstance(value, str) else kind(value)
    except (TypeError, ValueError):
        raise ConfigError(source, f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(source, f"'{key}' must be an integer, got {value!r}")
    return number


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError("--set", f"'{key}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value
