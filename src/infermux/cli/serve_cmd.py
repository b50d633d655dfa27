"""``infermux serve``: load the engine, check the binding is safe, run the OpenAI-compatible server."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from infermux.cli.common import fail, load_cli_config, setup_logging, user_errors, warn_if_greedy_loops

API_KEY_ENV = "INFERMUX_API_KEY"

logger = logging.getLogger("infermux.serve")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_serve(
    *,
    config: str | None,
    overrides: list[str],
    engine: str | None,
    host: str,
    port: int,
    api_key: str | None,
    model_name: str | None,
    max_body_mb: float,
    log_level: str | None,
    body_timeout: float = 30.0,
    max_messages: int = 2048,
    max_prompt_chars: int = 4 * 2**20,
    allowed_hosts: list[str] | None = None,
    cors_origins: list[str] | None = None,
    batch_dir: str | None = None,
    batch_concurrency: int = 4,
) -> None:
    setup_logging(log_level)
    api_key = api_key or None
    if not is_loopback(host) and not api_key:
        fail(
            f"refusing to serve on {host} without an API key: anyone who can reach this machine could use it. "
            f"Set --api-key (or the {API_KEY_ENV} environment variable), or bind 127.0.0.1."
        )
    if api_key is not None and len(api_key) < 8:
        fail("--api-key must be at least 8 characters.")
    if not 0 <= port <= 65535:
        fail(f"--port {port} is not a TCP port (0-65535).")
    if max_body_mb <= 0:
        fail("--max-body-mb must be positive.")
    if body_timeout <= 0 or max_messages < 1 or max_prompt_chars < 1:
        fail("--body-timeout, --max-messages and --max-prompt-chars must be positive.")
    for origin in cors_origins or ():
        if origin != "*" and not origin.startswith(("http://", "https://")):
            fail(f"--cors-origin {origin!r} is not an origin: write it as the browser does, e.g. https://app.example.")
    if batch_concurrency < 1:
        fail("--batch-concurrency must be at least 1.")
    from infermux.serve.guard import Limits  # serve only: web-server code stays out of other commands

    limits = Limits(max_body=int(max_body_mb * 2**20), body_timeout=body_timeout, max_messages=max_messages,
                    max_prompt_chars=max_prompt_chars)  # fmt: skip
    hosts = [*(allowed_hosts or ()), *_own_names(host)]
    with user_errors():
        cfg = load_cli_config(config, overrides, engine=engine)
        if cfg.input_path or cfg.output_path:
            logger.warning("input_path/output_path in the config are ignored by serve.")
        from infermux.engines.registry import build_engine

        built = build_engine(cfg)
        preset: dict[str, float] = {}
        if config is None:  # as the chat does: sampling with a repetition guard, for requests that choose none
            from infermux.cli.chat_session import chat_preset

            preset = chat_preset(cfg.generation, built.get_supported_params(), built.label)
            if preset:
                settings = " ".join(f"{k}={v}" for k, v in preset.items())
                logger.info("no config given: requests that set no temperature, top_p or penalty get %s", settings)
        else:
            warn_if_greedy_loops(cfg)
    try:
        with _batch_folder(batch_dir) as folder:
            app = _app(built, cfg.generation, model_name or cfg.model.model_name, api_key, limits, hosts, cors_origins,
                       preset, folder, batch_concurrency)  # fmt: skip
            _serve(app, built.label, model_name or cfg.model.model_name, host, port, api_key)
    finally:
        built.close()


@contextlib.contextmanager
def _batch_folder(batch_dir: str | None) -> Iterator[Path | None]:
    """The Batch API's folder, created, and held by this server alone while it runs. The default folder
    in use by another server: this one runs without a Batch API (and says so)."""
    from infermux.jobs.lock import JobBusyError, job_lock
    from infermux.serve.batch_store import default_batch_dir

    folder = Path(batch_dir).expanduser() if batch_dir else default_batch_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--batch-dir {folder}: cannot create it ({exc.strerror or exc}). Choose another folder.")
    if not os.access(folder, os.W_OK):
        fail(f"--batch-dir {folder}: not writable. Choose another folder.")
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(job_lock(folder / "serve.lock", str(folder)))
        except JobBusyError:
            if batch_dir:
                fail(f"--batch-dir {folder}: another infermux serve uses it. Stop that server, or give this one its "
                     "own --batch-dir.")  # fmt: skip
            logger.warning("another infermux serve uses %s: this one has no Batch API (give it --batch-dir)", folder)
            yield None
            return
        yield folder


def _own_names(host: str) -> list[str]:
    """Names besides IP addresses and localhost that clients may use: the bound name, and on a
    non-loopback bind this machine's own host names."""
    names = [] if is_loopback(host) else [socket.gethostname(), socket.getfqdn()]
    return [n for n in (host, *names) if n]


def _app(engine, defaults, served, api_key, limits, hosts, origins, preset, batch_dir, batch_width):  # type: ignore[no-untyped-def]
    from infermux.serve.app import create_app

    return create_app(engine, served_model=served, defaults=defaults, api_key=api_key, limits=limits,
                      allowed_hosts=hosts, cors_origins=origins or (), preset=preset, batch_dir=batch_dir,
                      batch_concurrency=batch_width)  # fmt: skip


def _serve(app, engine_name: str, served: str, host: str, port: int, api_key: str | None) -> None:  # type: ignore[no-untyped-def]
    from aiohttp import web

    shown = f"[{host}]" if ":" in host else host

    def announce(message: object) -> None:
        sys.stderr.write(
            f"serving {served} on {engine_name} at http://{shown}:{port}  (OpenAI API under /v1, chat page at /)"
            f"{'; API key required' if api_key else ''}\n"
        )
        sys.stderr.flush()

    try:
        web.run_app(app, host=host, port=port, print=announce, access_log=None, handler_cancellation=True)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Choose another --port or --host.")
