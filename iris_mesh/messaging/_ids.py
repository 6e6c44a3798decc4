"""Client-made message ids: 16 bytes, time-ordered, strictly increasing per generator.

Layout (docs/PROTOCOL.md, "Message ids")::

    bytes 0-5    wall-clock time of creation, Unix milliseconds, big-endian (48 bits)
    bytes 6-15   80 bits: random for the first id of a millisecond, then +1 per id

This is ULID's binary layout with its monotonic rule: within one millisecond
the generator increments the previous random part instead of drawing a new
one, so the ids of one client sort bytewise in creation order. A clock that
stands still or steps back does not break that: the generator keeps the last
timestamp it used and increments on from there. If the 80 bits run out within
one millisecond it moves to the next millisecond. The id is the idempotency
key of `send`: a resend must reuse it, never mint a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from ._protocol import MESSAGE_ID_BYTES

__all__ = ["MAX_ID_AHEAD_MS", "MESSAGE_ID_BYTES", "MessageIdGenerator", "id_from_hex", "id_time_ms", "id_to_hex"]

# An edge refuses a send whose id is stamped further ahead of its own clock than this: a wrong
# clock made it, and the id's time becomes the stored message's version (PROTOCOL.md section 10).
MAX_ID_AHEAD_MS = 24 * 3600 * 1000

_TIME_BYTES = 6
_RANDOM_BYTES = MESSAGE_ID_BYTES - _TIME_BYTES
_MAX_TIME_MS = (1 << (8 * _TIME_BYTES)) - 1
_RANDOM_LIMIT = 1 << (8 * _RANDOM_BYTES)


class MessageIdGenerator:
    """Makes strictly increasing message ids; not thread-safe, so one caller at a time (the SDK holds a lock)."""

    __slots__ = ("_random_bytes", "_last_ms", "_last_random")

    def __init__(self, random_bytes: Callable[[int], bytes]) -> None:
        """`random_bytes(n)` returns n unpredictable bytes (os.urandom in production)."""
        self._random_bytes = random_bytes
        self._last_ms = -1
        self._last_random = 0

    def next(self, wall_ms: int) -> bytes:
        """A new id stamped `wall_ms` (Unix ms), or the last stamp if the clock stepped back; above every earlier id."""
        if not isinstance(wall_ms, int) or isinstance(wall_ms, bool) or not 0 <= wall_ms <= _MAX_TIME_MS:
            raise ValueError(f"wall_ms must be an integer in [0, 2**48), got {wall_ms!r}")
        if wall_ms > self._last_ms:
            ms, rand = wall_ms, self._draw()
        elif self._last_random + 1 < _RANDOM_LIMIT:
            ms, rand = self._last_ms, self._last_random + 1
        elif self._last_ms < _MAX_TIME_MS:
            ms, rand = self._last_ms + 1, self._draw()
        else:
            raise OverflowError("message id space exhausted: the generator reached the largest 48-bit timestamp")
        self._last_ms, self._last_random = ms, rand
        return ms.to_bytes(_TIME_BYTES, "big") + rand.to_bytes(_RANDOM_BYTES, "big")

    def _draw(self) -> int:
        raw = self._random_bytes(_RANDOM_BYTES)
        if not isinstance(raw, bytes) or len(raw) != _RANDOM_BYTES:
            raise ValueError(f"random_bytes({_RANDOM_BYTES}) returned {raw!r}, not {_RANDOM_BYTES} bytes")
        return int.from_bytes(raw, "big")


def _check(msg_id: bytes) -> None:
    if not isinstance(msg_id, bytes) or len(msg_id) != MESSAGE_ID_BYTES:
        raise ValueError(f"a message id is exactly {MESSAGE_ID_BYTES} bytes, got {msg_id!r}")


def id_time_ms(msg_id: bytes) -> int:
    """The Unix milliseconds stamped in an id."""
    _check(msg_id)
    return int.from_bytes(msg_id[:_TIME_BYTES], "big")


def id_to_hex(msg_id: bytes) -> str:
    """An id as 32 lowercase hex digits (logs, meshctl, test vectors); sorts like the bytes."""
    _check(msg_id)
    return msg_id.hex()


def id_from_hex(text: str) -> bytes:
    """The id written by id_to_hex (either case); ValueError for anything else."""
    try:
        raw = bytes.fromhex(text) if isinstance(text, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != MESSAGE_ID_BYTES or len(text) != 2 * MESSAGE_ID_BYTES:
        raise ValueError(f"a message id in hex is {2 * MESSAGE_ID_BYTES} hex digits, got {text!r}")
    return raw
