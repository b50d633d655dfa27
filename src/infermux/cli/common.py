"""What every command shares: logging set-up, user-error handling, config loading from CLI options."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from infermux.errors import InfermuxError

if TYPE_CHECKING:
    from infermux.configs.inference_config import InferenceConfig

EXIT_USER_ERROR = 2
EXIT_ROWS_FAILED = 3
EXIT_BUDGET = 4  # --max-cost stopped the job before every row started (resumable)

_debug = False
_options: list[str] = []  # the running command's own option names, for "did you mean" on a misspelled one


def command_args(ctx: Any) -> list[str]:
    """The ``--section.field VALUE`` overrides a command was given (``ctx.args``); its own option names are
    kept so that a misspelled option (``--input-paht``) is answered with the closest one."""
    _options[:] = [opt for param in ctx.command.params for opt in (*param.opts, *param.secondary_opts)]
    return list(ctx.args)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        return f"{level}: {record.getMessage()}" if record.levelno >= logging.WARNING else record.getMessage()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is at each line: while a progress bar is live, rich points it at
    itself, so a log line (``loading MODEL on ENGINE``, a warning) prints above the bar, not through it."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(level: str | None) -> None:
    """Our log lines at ``level`` (default info) on stderr; the engine libraries' own at ``level`` when the
    user gave one, else at warning (see :func:`quiet_libraries`)."""
    global _debug
    name = (level or "info").strip().upper()
    numeric = getattr(logging, name, None)
    if not isinstance(numeric, int):
        fail(f"unknown --log-level {level!r}: use debug, info, warning or error.")
    quiet_libraries(numeric if level else None)
    _debug = numeric <= logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(_Formatter() if not _debug else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if not _debug else logging.DEBUG)
    logging.getLogger("infermux").setLevel(numeric)


def quiet_libraries(level: int | None) -> None:
    """Set the heavy libraries' log levels through their environment variables, before they are imported:
    vLLM reads ``VLLM_LOGGING_LEVEL`` at import (INFO by default, a screenful per job, on stdout) and its
    engine core and workers are child processes, which inherit the environment; transformers reads
    ``TRANSFORMERS_VERBOSITY``. ``level`` None (no --log-level): WARNING. A variable the user set wins.
    vLLM's lines go to stderr, so stdout keeps only answers. (Ray gets its level in ``ray.init``; llama.cpp
    is silenced by the engine's ``verbose=False``.)"""
    name = logging.getLevelName(max(level, logging.DEBUG) if level is not None else logging.WARNING)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", name)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", name.lower())


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn infermux errors into a one-paragraph message and exit code 2 (traceback only in debug)."""
    try:
        yield
    except InfermuxError as exc:
        if _debug:
            raise
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; rerun the same command to resume.\n")
        raise SystemExit(130) from None


def load_cli_config(
    config: str | None, overrides: list[str], *, engine: str | None = None, strict: bool = False
) -> InferenceConfig:
    from infermux.configs.loader import load_config, parse_overrides

    pairs = parse_overrides(overrides, _options)
    if engine:
        pairs.append(("engine", engine))
    if strict:
        pairs.append(("strict", "true"))
    return load_config(config, pairs)


def greedy_loops_likely(cfg: InferenceConfig) -> bool:
    """Whether ``cfg`` runs the default model greedily without a repetition guard."""
    from infermux.models.default import is_default_model

    g = cfg.generation
    return is_default_model(cfg.model.model_name) and not (g.sampling or g.frequency_penalty or g.presence_penalty)


def warn_if_greedy_loops(cfg: InferenceConfig) -> None:
    """The default model decoding greedily without a repetition guard tends to repeat one phrase until the
    token limit ("la Femme, la Femme, ..."): say so, and how to change it. The SPEC's defaults stay."""
    if not greedy_loops_likely(cfg):
        return
    logging.getLogger("infermux").warning(
        "%s decodes greedily (temperature 0, the SPEC default) without a repetition guard: small models then "
        "often repeat a phrase until max_new_tokens. Add --generation.frequency_penalty 0.3 (answers stay "
        "repeatable), or sample with --generation.temperature 0.7 --generation.top_p 0.9.",
        cfg.model.model_name,
    )
