"""Key layout: a key's partition (what placement hashes) is the part before its first NUL byte.

All keys of one partition live on the same replica set, so a prefix scan of
`partition + b"\\x00"` reads one replica set: an offline inbox is keyed
`user \\x00 message_id` and is scanned per user.
"""

from __future__ import annotations

__all__ = ["SEPARATOR", "partition_key", "compose"]

SEPARATOR = b"\x00"


def partition_key(key: bytes) -> bytes:
    """The bytes placement hashes: everything before the first NUL (the whole key if it has none)."""
    cut = key.find(SEPARATOR)
    return key if cut < 0 else key[:cut]


def compose(partition: bytes, *parts: bytes) -> bytes:
    """A key in `partition`, ordered by `parts`; the partition itself must not contain NUL."""
    if SEPARATOR in partition or not partition:
        raise ValueError("a partition must be non-empty and contain no NUL byte")
    return SEPARATOR.join((partition, *parts))
