"""The text form of a CURVE public key, as peer cards, TXT records and `move` frames carry it."""

from __future__ import annotations

__all__ = ["is_z85_key"]

_Z85_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
_Z85_KEY_CHARS = 40  # 32 bytes


def is_z85_key(key: object) -> bool:
    """True for 40 characters of Z85 text: a CURVE public key."""
    return isinstance(key, str) and len(key) == _Z85_KEY_CHARS and set(key) <= _Z85_CHARS
