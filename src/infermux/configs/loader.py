"""Load an :class:`InferenceConfig` from YAML plus command-line overrides, with precise errors.

- ``${VAR}``, ``${VAR:-default}``, ``${oc.env:VAR}`` and ``${oc.env:VAR,default}`` are replaced from
  the environment;
- overrides are dotted paths (``model.model_name=X`` or ``--model.model_name X``) whose values are
  typed as YAML would type them;
- an unknown key names the file, the line and the closest valid key; a bad value names the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from infermux.configs._base import ConfigModel, logger
from infermux.configs.distributed_params import DistributedParams
from infermux.configs.endpoint_params import EndpointParams
from infermux.configs.fallback_params import FallbackConfig
from infermux.configs.generation_params import GenerationParams, GuidedDecodingParams
from infermux.configs.inference_config import InferenceConfig
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams
from infermux.errors import ConfigError

__all__ = ["apply_overrides", "load_config", "parse_overrides"]

_Path = tuple[Any, ...]
_ENV = re.compile(r"\$\{(?:oc\.env:)?([A-Za-z_][A-Za-z0-9_]*)(?:(?::-|,)([^}]*))?\}")

# Which config class validates the mapping found at a path; other dicts (model_kwargs, ...) are free.
_SECTIONS: dict[_Path, type[ConfigModel]] = {
    (): InferenceConfig,
    ("model",): ModelParams,
    ("generation",): GenerationParams,
    ("generation", "guided_decoding"): GuidedDecodingParams,
    ("remote_params",): RemoteParams,
    ("distributed",): DistributedParams,
    ("remote_params", "endpoints", "*"): EndpointParams,
    ("fallbacks", "*"): FallbackConfig,
    ("fallbacks", "*", "model"): ModelParams,
    ("fallbacks", "*", "generation"): GenerationParams,
    ("fallbacks", "*", "generation", "guided_decoding"): GuidedDecodingParams,
    ("fallbacks", "*", "remote_params"): RemoteParams,
    ("fallbacks", "*", "remote_params", "endpoints", "*"): EndpointParams,
}


def _section(path: _Path) -> type[ConfigModel] | None:
    """The config class of the mapping at ``path`` (list items match ``*``), or None for a free mapping."""
    return _SECTIONS.get(tuple("*" if isinstance(p, int) else p for p in path))


class _Where:
    """Where each key came from (file and line, or the command line)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[_Path, int] = {}
        self.overridden: set[_Path] = set()

    def at(self, path: _Path) -> str:
        for cut in range(len(path), -1, -1):
            prefix = path[:cut]
            if prefix in self.overridden:
                return "command line override: "
            if prefix in self.lines:
                return f"{self.source}:{self.lines[prefix]}: "
        return f"{self.source}: " if self.source else ""


def _dotted(path: _Path) -> str:
    return ".".join(str(p) for p in path)


def _read_yaml(path: Path, where: _Where) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found. Check the path given to -c/--config.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}.") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        data = _build(loader, node, (), where)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(
            f"{path}:{line}: invalid YAML: {exc.problem}. Check indentation and quoting near that line."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping (model:, generation:, engine:, ...).")
    return data


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: _Path, where: _Where) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            where.lines[path + (key,)] = key_node.start_mark.line + 1  # noqa: RUF005 (mypy/3.10 parses this form)
            out[key] = _build(loader, value_node, (*path, key), where)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), where) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _interpolate(value: Any, path: _Path, where: _Where) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), where) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), where) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{where.at(path)}{_dotted(path)} refers to ${{{name}}}, which is not set. "
            f"Export {name}=... or give a default as ${{{name}:-value}}."
        )

    return _ENV.sub(replace, value)


def parse_overrides(args: Sequence[str], options: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Turn ``["--a.b", "1", "--c.d=x", "e.f=2"]`` into ``[("a.b", "1"), ("c.d", "x"), ("e.f", "2")]``.

    ``options`` are the command's own option names (``--input_path``, ...): an unknown option is
    reported with the closest of them or of the config's top-level keys ("did you mean")."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key = arg[2:] if arg.startswith("--") else arg
        name = key.split("=", 1)[0]
        if not name or ("." not in name and name.replace("-", "_") not in InferenceConfig.model_fields):
            raise ConfigError(_unknown_option(arg.split("=", 1)[0], options))
        if "=" in key:
            value = key.split("=", 1)[1]
            i += 1
        elif arg.startswith("--") and i + 1 < len(args):
            value = args[i + 1]
            i += 2
        else:
            raise ConfigError(
                f"override {arg!r} has no value. Write it as --section.field VALUE or section.field=VALUE."
            )
        pairs.append((name.replace("-", "_") if name.count(".") == 0 else name, value))
    return pairs


def _unknown_option(arg: str, options: Iterable[str]) -> str:
    """``unknown option '--input-paht'. Did you mean '--input-path'?``"""
    import difflib

    candidates = [o for o in options if o.startswith("--")]
    candidates += [f"--{field}" for field in InferenceConfig.model_fields if f"--{field}" not in candidates]
    candidates += [f"--{section}." for section in ("model", "generation", "remote_params", "distributed")]
    bare = arg if arg.startswith("--") else f"--{arg}"
    match = difflib.get_close_matches(bare, candidates, n=1, cutoff=0.6)
    hint = f" Did you mean '{match[0]}'?" if match else ""
    return (
        f"unknown option {arg!r}.{hint} See --help for the options; config overrides look like "
        "--generation.max_new_tokens 5."
    )


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[tuple[str, str]], where: _Where | None = None
) -> dict[str, Any]:
    """Set each dotted path in ``data`` to the YAML-typed value."""
    for dotted, raw in overrides:
        keys = dotted.split(".")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"command line override: {'.'.join(keys[: depth + 1])} is not a section; cannot set {dotted}."
                )
            node = child
        node[keys[-1]] = value
        if where is not None:
            where.overridden.add(tuple(keys))
    return data


def _check_keys(data: dict[str, Any], path: _Path, where: _Where, unknown: list[tuple[str, _Path]]) -> None:
    """Collect every unknown key in ``unknown`` as (message, path of the key it probably meant) and drop it
    from ``data``, so the rest can still be validated: a user fixes every mistake in one round."""
    cls = _section(path)
    assert cls is not None
    for key in list(data):
        value = data[key]
        if key == "json" and cls is GuidedDecodingParams:
            continue
        if not isinstance(key, str) or key not in cls.known_keys():
            hint = cls.suggest(str(key))
            valid = ", ".join(
                sorted(cls.model_fields if cls is not GuidedDecodingParams else ["json", "regex", "choice"])
            )
            unknown.append(
                (
                    f"{where.at((*path, key))}unknown key '{_dotted((*path, key))}'."
                    + (f" Did you mean '{hint}'?" if hint else "")
                    + f" Valid keys{' under ' + _dotted(path) if path else ''}: {valid}.",
                    (*path, hint) if hint else (),
                )
            )
            del data[key]
            continue
        if key in cls.oumi_ignored:
            logger.warning(
                "%s'%s' is an Oumi setting that infermux does not use; ignored.",
                where.at((*path, key)),
                _dotted((*path, key)),
            )
            del data[key]
            continue
        sub = (*path, key)
        if isinstance(value, dict) and _section(sub) is not None:
            _check_keys(value, sub, where, unknown)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict) and _section((*sub, i)) is not None:
                    _check_keys(item, (*sub, i), where, unknown)


def _unknown_message(unknown: list[tuple[str, _Path]]) -> str:
    if len(unknown) == 1:
        return unknown[0][0]
    return f"{len(unknown)} unknown keys:\n  " + "\n  ".join(message for message, _ in unknown)


def _validation_lines(exc: ValidationError, where: _Where, meant: Collection[_Path] = ()) -> list[str]:
    """One line per invalid value; a missing field that a misspelled key probably meant (``meant``) is
    left out: the unknown-key line already says it."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        if err["type"] == "missing" and loc in meant:
            continue
        msg = err["msg"].removeprefix("Value error, ")
        shown = repr(err["input"]) if "input" in err and not isinstance(err["input"], dict) else ""
        if loc and loc[-1] == "api_key":
            shown = ""
        got = f" (got {shown})" if shown and len(shown) < 80 else ""
        lines.append(f"{where.at(loc)}{_dotted(loc) or 'config'}: {msg}{got}.")
    return lines


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | Iterable[tuple[str, str]] = (),
    *,
    base: dict[str, Any] | None = None,
) -> InferenceConfig:
    """Read ``path`` (optional), apply ``overrides`` and validate into an :class:`InferenceConfig`."""
    where = _Where(str(path) if path is not None else "")
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data.update(_read_yaml(Path(path), where))
    given = list(overrides)
    pairs: list[tuple[str, str]] = (
        parse_overrides(given) if given and isinstance(given[0], str) else given  # type: ignore[arg-type,assignment]
    )
    apply_overrides(data, pairs, where)
    data = _interpolate(data, (), where)
    if isinstance(data.get("engine"), str):
        data["engine"] = data["engine"].strip().upper()
    unknown: list[tuple[str, _Path]] = []
    _check_keys(data, (), where, unknown)
    try:
        config = InferenceConfig.model_validate(data)
    except ValidationError as exc:
        lines = _validation_lines(exc, where, {meant for _, meant in unknown})
        parts = [_unknown_message(unknown)] if unknown else []
        if lines:
            parts.append("Invalid configuration:\n  " + "\n  ".join(lines))
        raise ConfigError("\n".join(parts)) from None
    if unknown:
        raise ConfigError(_unknown_message(unknown))
    return config
