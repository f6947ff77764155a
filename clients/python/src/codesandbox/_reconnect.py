"""When and how often to re-attach after a dropped connection."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ReconnectOptions:
    """Capped exponential backoff for ``auto_reconnect``.

    Attempt ``n`` (from 1) waits ``min(max_delay, initial_delay * multiplier**(n-1))``
    seconds, spread by +/- ``jitter`` (a fraction), before re-attaching. After
    ``max_attempts`` failed attempts every pending wait fails with
    ``SandboxConnectionError``. The defaults retry for about a minute, long enough for a
    server to notice that the old connection is dead (it answers ``SANDBOX_IN_USE``
    until then).
    """

    max_attempts: int = 10
    initial_delay: float = 0.25
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, base)
