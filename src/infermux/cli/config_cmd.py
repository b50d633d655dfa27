"""``infermux config check``: validate and show a config without loading a model."""

from __future__ import annotations

import yaml

from infermux.cli.common import fail, load_cli_config, setup_logging, user_errors
from infermux.errors import install_hint


def run_config_check(config: str | None, overrides: list[str], log_level: str, *, engine: str | None = None) -> None:
    """``--strict true`` stays an override here (``strict`` is a config field), so a stricter check reads
    the same as in the config file."""
    setup_logging(log_level)
    with user_errors():
        cfg = load_cli_config(config, overrides, engine=engine)
        from infermux.engines.capabilities import check_limits, check_params
        from infermux.engines.registry import engine_class, engine_specs, is_available

        engine_name = str(cfg.resolved_engine())
        data = cfg.model_dump(mode="json", exclude_none=True, by_alias=True)
        if cfg.remote_params is not None and cfg.remote_params.api_key is not None:
            data["remote_params"]["api_key"] = "***"
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
        spec = engine_specs()[engine_name]
        available = is_available(engine_name)
        limits: list[str] = []
        print(f"# engine: {engine_name} ({spec.class_name}){'' if available else ' — not installed'}")
        if not available:
            print(f"#   install with: {install_hint(spec.extra)}")
        else:
            cls = engine_class(engine_name)
            problems = check_params(cls.__name__, cls.capabilities, cfg.generation, cfg.model, strict=cfg.strict)
            limits = check_limits(engine_name, cls.capabilities, cfg.generation)
            if not problems and not limits:
                print("# every requested parameter is supported by this engine")
        print(f"# fingerprint: {cfg.fingerprint()}")
        if limits:
            fail("; ".join(limits) + ". Every request would be rejected: change these settings.")
