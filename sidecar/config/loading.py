"""Loading: the YAML file, then ``SIDECAR_<SECTION>__<KEY>`` environment overrides, then one validation whose
problems become one line each, naming the key path and, for an override, the variable."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sidecar.config.files import MAX_CONFIG_BYTES, Unreadable, read_bounded
from sidecar.config.models.base import Loc, Problems
from sidecar.config.models.root import Config
from sidecar.errors import ConfigError

ENV_PREFIX = "SIDECAR_"
CONFIG_ENV = "SIDECAR_CONFIG"

# libyaml's parser when PyYAML has it: the pure-Python one took 44 s for a 1 MiB file of routes, libyaml 5 s.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """SafeLoader that rejects a key repeated in one mapping (PyYAML would silently keep the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_file(path: str) -> dict[str, Any]:
    try:
        text = read_bounded(path, MAX_CONFIG_BYTES).decode("utf-8")
    except Unreadable as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the config file is not UTF-8 text"]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: invalid YAML{where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections, not a {type(data).__name__}"])
    # A section written with nothing under it (`routes:`) means "the defaults".
    return {key: value for key, value in data.items() if value is not None}


def _parse_yaml_value(raw: str) -> Any:
    try:
        return yaml.load(raw, Loader=_SafeLoader)  # noqa: S506 - SafeLoader or its libyaml twin
    except yaml.YAMLError:
        return raw


def _section_models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for name, field in Config.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            models[name] = field.annotation
    return models


def _env_value(model: type[BaseModel], key: str, raw: str) -> Any:
    """An override's value: a list is a YAML flow sequence or comma-separated; anything else the raw string.

    Strings are taken verbatim (YAML would turn ``""`` into null and ``1:20`` into 80); pydantic parses
    booleans (``true``/``false``/``1``/``0``/``yes``/``no``) and durations come through ``parse_duration``.
    """
    if getattr(model.model_fields[key].annotation, "__origin__", None) is tuple:
        text = raw.strip()
        if text.startswith("["):
            return _parse_yaml_value(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str], problems: list[str], sources: dict[Loc, str]) -> None:
    sections = _section_models()
    overrides: list[tuple[int, str, list[str], str]] = []
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        parts = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        overrides.append((len(parts), name, parts, raw))
    # Whole sections (SIDECAR_ROUTES) first, then single keys (SIDECAR_REDIS__URL) on top of them.
    for _, name, parts, raw in sorted(overrides):
        section = parts[0]
        where = f"environment variable {name}"
        if section not in Config.model_fields:
            if len(parts) > 1:  # SIDECAR_FOO (no "__") may belong to something else; SIDECAR_FOO__BAR is ours
                problems.append(f"{where}: unknown section {section!r} (sections: {', '.join(Config.model_fields)})")
            continue
        if len(parts) == 1:
            value = _parse_yaml_value(raw)
            if section in sections and isinstance(value, dict) and isinstance(data.get(section), dict):
                value = {**data[section], **value}
            data[section] = value
            sources[(section,)] = name
            continue
        model = sections.get(section)
        if model is None:
            problems.append(f"{where}: {section} is a list; set it whole with {ENV_PREFIX}{section.upper()}")
            continue
        key = parts[1]
        if len(parts) > 2 or key not in model.model_fields:
            problems.append(
                f"{where}: unknown key {'__'.join(parts[1:])!r} in section {section} "
                f"(keys: {', '.join(model.model_fields)})"
            )
            continue
        target = data.setdefault(section, {})
        if isinstance(target, dict):  # else the file's section is malformed, and validation will say so
            target[key] = _env_value(model, key, raw)
            sources[(section, key)] = name


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "is required",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
}


_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "less_than_equal": ("le", "at most"),
    "greater_than": ("gt", "greater than"),
    "less_than": ("lt", "less than"),
}


def _bound_message(error: Mapping[str, Any]) -> str | None:
    bound = _BOUNDS.get(error["type"])
    if bound is None:
        return None
    key, words = bound
    return f"must be {words} {error.get('ctx', {}).get(key)}"


def _path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: Mapping[str, Any], sources: Mapping[Loc, str]) -> Iterator[str]:
    loc: Loc = tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Problems):
        entries = [(loc + sub, message) for sub, message in cause.problems]
    elif isinstance(cause, ValueError):
        entries = [(loc, str(cause))]
    else:
        entries = [(loc, _MESSAGES.get(error["type"]) or _bound_message(error) or error["msg"])]
    for where, message in entries:
        source = next((sources[where[:n]] for n in range(len(where), 0, -1) if where[:n] in sources), None)
        suffix = f" (from {source})" if source else ""
        yield f"{_path(where) or '(top level)'}: {message}{suffix}"


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the config file (``path``, else ``$SIDECAR_CONFIG``, else none) plus environment overrides.

    Raises ``ConfigError`` listing every problem found, each naming its key path.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if path is None:
        path = env.get(CONFIG_ENV) or None
    data = _read_file(path) if path is not None else {}
    problems: list[str] = []
    sources: dict[Loc, str] = {}
    _apply_env(data, env, problems, sources)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems.extend(_describe(error, sources))
    if problems:
        raise ConfigError(problems)
    return config
