"""Token bucket for the per-user send rate (`rate_limited`, with `retry_after`).

The bucket holds up to `burst` tokens, starts full and refills at
`rate_per_s` tokens per second of the monotonic clock passed in as `now`. A
send takes one token; with none left the caller answers
`error{code:"rate_limited", retry_after}` with the seconds `try_take` returned,
which is exactly when the next token will be there. Refused attempts take
nothing, so a client that waits `retry_after` gets through.
"""

from __future__ import annotations

__all__ = ["RateLimiter"]

# Float refills can land a hair under a whole token at the very instant retry_after promised one.
_EPSILON = 1e-9


class RateLimiter:
    """One token bucket; not thread-safe, engine thread only."""

    __slots__ = ("_rate_per_s", "_burst", "_tokens", "_last")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        """ValueError unless rate_per_s > 0 and burst >= 1."""
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s!r}")
        if not burst >= 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self._rate_per_s = float(rate_per_s)
        self._burst = float(burst)
        self._tokens = self._burst
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate_per_s)
        # A clock that steps back refills nothing and does not move the reference back.
        if self._last is None or now > self._last:
            self._last = now

    def try_take(self, now: float) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available (nothing taken)."""
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self._rate_per_s

    def is_full(self, now: float) -> bool:
        """True when the bucket is back at `burst`: an idle user's limiter can be dropped and made anew."""
        self._refill(now)
        return self._tokens >= self._burst - _EPSILON
