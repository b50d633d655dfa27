"""Run a coroutine to completion from synchronous code, also from inside a running event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["run_sync"]


def run_sync(make: Callable[[], Any]) -> Any:
    """Run the coroutine made by ``make`` to completion (in a helper thread when a loop is running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="infermux-infer")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
