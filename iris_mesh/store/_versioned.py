"""Versioned values and the hybrid logical clock that orders them.

Every stored value carries a Version: a hybrid logical clock reading (wall-clock
milliseconds in the high 48 bits, a logical counter in the low 16) and the id of
the node that made it. Versions compare as (hlc, node), so concurrent writes of
one key resolve the same way on every replica: the larger version wins. A delete
is a value too (a tombstone, `value is None`), so it wins over older writes and
anti-entropy never brings the deleted data back.

On-disk layout of a versioned value:

    byte 0      format (1)
    byte 1      flags (bit 0: tombstone)
    bytes 2-9   hlc, big-endian unsigned 64-bit
    byte 10     length N of the node id (UTF-8)
    N bytes     node id
    rest        the value (empty for a tombstone)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Version", "Versioned", "HybridClock", "encode_versioned", "decode_versioned", "VersionError"]

_FORMAT = 1
_TOMBSTONE = 0x01
_HEADER = struct.Struct(">BBQB")
_LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << _LOGICAL_BITS) - 1


class VersionError(ValueError):
    """Bytes that are not a versioned value of a known format."""


@dataclass(frozen=True, slots=True, order=True)
class Version:
    hlc: int
    node: str

    @property
    def wall_ms(self) -> int:
        return self.hlc >> _LOGICAL_BITS


@dataclass(frozen=True, slots=True)
class Versioned:
    """A value (or a tombstone when `value is None`) with its version."""

    version: Version
    value: bytes | None

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def newer_than(self, other: Versioned | None) -> bool:
        return other is None or self.version > other.version


def encode_versioned(item: Versioned) -> bytes:
    node = item.version.node.encode()
    if len(node) > 255:
        raise VersionError("node id longer than 255 bytes")
    flags = _TOMBSTONE if item.value is None else 0
    return _HEADER.pack(_FORMAT, flags, item.version.hlc, len(node)) + node + (item.value or b"")


def decode_versioned(raw: bytes) -> Versioned:
    if len(raw) < _HEADER.size:
        raise VersionError(f"versioned value too short ({len(raw)} bytes)")
    fmt, flags, hlc, node_len = _HEADER.unpack_from(raw)
    if fmt != _FORMAT:
        raise VersionError(f"unknown versioned value format {fmt}")
    start = _HEADER.size
    if len(raw) < start + node_len:
        raise VersionError("versioned value truncated in its node id")
    try:
        node = raw[start : start + node_len].decode()
    except UnicodeDecodeError:
        raise VersionError("versioned value has a node id that is not UTF-8") from None
    value = None if flags & _TOMBSTONE else bytes(raw[start + node_len :])
    return Versioned(Version(hlc, node), value)


class HybridClock:
    """Hybrid logical clock (Kulkarni et al.): monotonic, close to wall time, merges remote readings."""

    __slots__ = ("_node", "_last")

    def __init__(self, node_id: str, last_hlc: int = 0) -> None:
        self._node = node_id
        self._last = last_hlc

    def now(self, wall_ms: int) -> Version:
        """A new version, larger than every version this clock has made or observed."""
        candidate = wall_ms << _LOGICAL_BITS
        self._last = candidate if candidate > self._last else self._last + 1
        return Version(self._last, self._node)

    def observe(self, version: Version) -> None:
        """Merge a version seen from elsewhere, so later local versions order after it."""
        if version.hlc > self._last:
            self._last = version.hlc

    @property
    def last_hlc(self) -> int:
        return self._last
