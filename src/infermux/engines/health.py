"""Whether a server or an engine takes requests now: healthy, resting after failures, or being probed.

Shared by the endpoint pool of a remote engine (:mod:`infermux.engines.remote.http.endpoints`) and the
fallback chain (:mod:`infermux.engines.fallback`).
"""

from __future__ import annotations

import time

__all__ = ["BURST", "Health"]

#: Failures in a row that put an endpoint to rest.
BURST = 3
_MAX_REST_S = 600.0


class Health:
    """Whether a server (or an engine) takes requests: healthy, resting until a time, or being probed."""

    def __init__(self, cooldown_s: float, *, burst: int = BURST) -> None:
        self.cooldown_s = cooldown_s
        self.burst = burst
        self.failures = 0  # in a row
        self.rest_until = 0.0  # monotonic; 0: not resting
        self.rest_s = cooldown_s
        self.probing = False
        self.rests = 0  # how often it was put to rest (for reports and tests)

    def usable(self, now: float) -> bool:
        """Healthy, or its rest is over and no probe is out."""
        return not self.rest_until or (now >= self.rest_until and not self.probing)

    def begin(self, now: float) -> None:
        """A request is sent: after a rest, it is the probe."""
        if self.rest_until and now >= self.rest_until:
            self.probing = True

    def abandoned(self) -> None:
        """A request was cancelled before its answer: if it was the probe, the next request probes."""
        self.probing = False

    def succeeded(self) -> None:
        self.failures = 0
        self.rest_until = 0.0
        self.rest_s = self.cooldown_s
        self.probing = False

    def failed(self, *, down: bool = False) -> bool:
        """Count a failure; True when the server is now put to rest (``down``: at once)."""
        self.failures += 1
        if not (down or self.probing or self.failures >= self.burst):
            return False
        if self.probing:  # the probe failed: rest twice as long
            self.rest_s = min(self.rest_s * 2.0, _MAX_REST_S)
        elif self.rest_until:  # already resting (requests sent before it went down): keep that rest
            return False
        self.rest_until = time.monotonic() + self.rest_s
        self.probing = False
        self.failures = 0
        self.rests += 1
        return True
