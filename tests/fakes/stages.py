"""Hold a fake's request at one stage of a batch job, so a test can kill the client right there.

``fake.hold(method, pattern, after=False)`` makes the next request whose method matches and whose path
matches the regular expression ``pattern`` wait (``after=True``: wait after the fake acted on it, as when
a reply is lost). :attr:`Holds.reached` is set when a request is held; :meth:`Holds.release` lets it go
(its client, killed meanwhile, never reads the answer).
"""

from __future__ import annotations

import asyncio
import re
import threading


class Holds:
    def __init__(self) -> None:
        self.reached = threading.Event()
        self._hold: tuple[str, re.Pattern[str], bool] | None = None

    def hold(self, method: str, pattern: str, *, after: bool = False) -> None:
        self.reached.clear()
        self._hold = (method, re.compile(pattern), after)

    def release(self) -> None:
        self._hold = None

    async def wait_if_held(self, method: str, path: str, *, after: bool = False) -> None:
        held = self._hold
        if held is None or held[0] != method or held[2] != after or not held[1].fullmatch(path):
            return
        self.reached.set()
        while self._hold is held:
            await asyncio.sleep(0.02)
