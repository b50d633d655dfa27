"""``infermux config check``: validate and show a config without loading a model."""

from __future__ import annotations

import logging
import os
from typing import Any

import yaml

from infermux.cli.common import fail, load_cli_config, setup_logging, user_errors
from infermux.errors import ConfigError, install_hint

logger = logging.getLogger("infermux.cli")


def run_config_check(
    config: str | None, overrides: list[str], log_level: str | None, *, engine: str | None = None
) -> None:
    """``--strict true`` stays an override here (``strict`` is a config field), so a stricter check reads
    the same as in the config file."""
    setup_logging(log_level)
    with user_errors():
        cfg = load_cli_config(config, overrides, engine=engine)
        from infermux.engines.capabilities import check_params
        from infermux.engines.registry import engine_class, engine_specs, is_available

        engine_name = str(cfg.resolved_engine())
        spec = engine_specs()[engine_name]
        available = is_available(engine_name)
        cls = engine_class(engine_name) if available else None
        data = cfg.model_dump(mode="json", exclude_none=True, by_alias=True)
        if cfg.remote_params is not None and cfg.remote_params.api_key is not None:
            data["remote_params"]["api_key"] = "***"
        _engine_defaults(cls, cfg, data)
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
        limits: list[str] = []
        print(f"# engine: {engine_name} ({spec.class_name}){'' if available else ' — not installed'}")
        if not available:
            print(f"#   install with: {install_hint(spec.extra)}")
        else:
            assert cls is not None
            problems = check_params(cls.__name__, cls.capabilities, cfg.generation, cfg.model, strict=cfg.strict)
            limits = cls.config_limit_problems(cfg.model, cfg.generation)
            _warn_missing_key(cls, cfg)
            if not problems and not limits:
                print("# every requested parameter is supported by this engine")
        print(f"# fingerprint: {cfg.fingerprint()}")
        if limits:
            fail("; ".join(limits) + ". Every request would be rejected: change these settings.")
        if cls is not None and _needs_url(cls, cfg):
            fail(getattr(cls, "missing_url_message")(engine_name))  # noqa: B009 (remote engines only)


def _engine_defaults(cls: Any, cfg: Any, data: dict[str, Any]) -> None:
    """Show what a job on this engine would use where the config says nothing: a remote engine's own
    ``num_workers`` (8 for most, not the section's field default of 1)."""
    default = getattr(cls, "default_num_workers", None)
    if default is None:
        return
    params = cfg.remote_params
    if params is None or "num_workers" not in params.model_fields_set:
        section = data.setdefault("remote_params", {})
        section["num_workers"] = default


def _needs_url(cls: Any, cfg: Any) -> bool:
    """A remote engine without a default URL and no ``remote_params.api_url``: a job would refuse to start."""
    if not hasattr(cls, "missing_url_message") or getattr(cls, "default_api_url", None):
        return False
    return not (cfg.remote_params is not None and cfg.remote_params.server_url)


def _warn_missing_key(cls: Any, cfg: Any) -> None:
    """A remote engine whose key is not in this environment: a warning (the job may run elsewhere)."""
    from infermux.engines.remote.base import RemoteEngine

    if not issubclass(cls, RemoteEngine):  # local, or keyed by its own SDK (BEDROCK: AWS credentials)
        return
    params = cfg.remote_params
    info = cls.provider_info()
    # Engines such as ANTHROPIC need the key for the provider's own API, not for a server set in api_url.
    required = info.key_required(params.server_url if params is not None else None)
    try:
        if params is not None:
            key = params.resolve_api_key(info.key_env, required=required)
        else:
            key = os.environ.get(info.key_env) or None if info.key_env else None
    except ConfigError as exc:
        logger.warning("%s A job would stop here before sending anything.", exc)
        return
    if key is None and required:
        where = f"the {info.key_env} environment variable" if info.key_env else "remote_params.api_key"
        logger.warning("%s needs an API key and %s is not set: a job would stop before sending anything.",
                       str(cfg.resolved_engine()), where)  # fmt: skip
