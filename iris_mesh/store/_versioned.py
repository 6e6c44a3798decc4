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
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

__all__ = ["Version", "Versioned", "HybridClock", "MAX_OBSERVED_AHEAD_MS", "encode_versioned", "decode_versioned",
           "decode_many", "VersionError"]

_FORMAT = 1
_TOMBSTONE = 0x01
_HEADER = struct.Struct(">BBQB")
_HEADER_SIZE = _HEADER.size
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack
_new_tuple = tuple.__new__
_LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << _LOGICAL_BITS) - 1
# Node ids seen in encoded versions: a cluster has a handful, and decoding them again costs more than a lookup.
_NODE_NAMES: dict[bytes, str] = {}
_NODE_BYTES: dict[str, bytes] = {}
_MAX_NODE_NAMES = 4096
# A version read from elsewhere that is further ahead of this node's wall clock than this is not merged into
# its clock: a node with a wrong clock (or a bad frame) must not drag every clock of the cluster far ahead of
# the time, up to where versions run out (the hlc is 64 bits).
MAX_OBSERVED_AHEAD_MS = 60_000


class VersionError(ValueError):
    """Bytes that are not a versioned value of a known format."""


class Version(NamedTuple):
    """(hlc, node): compares as that tuple, so every replica orders concurrent writes the same way."""

    hlc: int
    node: str

    @property
    def wall_ms(self) -> int:
        return self.hlc >> _LOGICAL_BITS


class Versioned(NamedTuple):
    """A value (or a tombstone when `value is None`) with its version."""

    version: Version
    value: bytes | None

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def newer_than(self, other: Versioned | None) -> bool:
        """Whether this one wins over `other`, the same way on every replica: the newer version wins.

        Equal versions with different values come only from two writes made from one message id (a
        stored message's version is its id's: a resend through another edge, or two senders' equal ids):
        the tombstone wins, else the larger value, so replicas that got both, in either order, agree.
        """
        if other is None or self.version > other.version:
            return True
        if self.version != other.version:
            return False
        value, other_value = self.value, other.value
        return value != other_value and (value is None or (other_value is not None and value > other_value))


def _node_bytes(node: str) -> bytes:
    raw = _NODE_BYTES.get(node)
    if raw is None:
        raw = node.encode()
        if len(raw) > 255:
            raise VersionError("node id longer than 255 bytes")
        if len(_NODE_BYTES) < _MAX_NODE_NAMES:
            _NODE_BYTES[node] = raw
    return raw


def encode_versioned(item: Versioned) -> bytes:
    (hlc, node), value = item
    node_raw = _NODE_BYTES.get(node) or _node_bytes(node)
    if value is None:
        return _pack_header(_FORMAT, _TOMBSTONE, hlc, len(node_raw)) + node_raw
    return b"".join((_pack_header(_FORMAT, 0, hlc, len(node_raw)), node_raw, value))


def _node_name(raw: bytes) -> str:
    name = _NODE_NAMES.get(raw)
    if name is None:
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            raise VersionError("versioned value has a node id that is not UTF-8") from None
        if len(_NODE_NAMES) < _MAX_NODE_NAMES:
            _NODE_NAMES[raw] = name
    return name


def decode_versioned(raw: bytes) -> Versioned:
    if type(raw) is not bytes:
        raw = bytes(raw)
    if len(raw) < _HEADER_SIZE:
        raise VersionError(f"versioned value too short ({len(raw)} bytes)")
    fmt, flags, hlc, node_len = _unpack_header(raw)
    if fmt != _FORMAT:
        raise VersionError(f"unknown versioned value format {fmt}")
    end = _HEADER_SIZE + node_len
    if len(raw) < end:
        raise VersionError("versioned value truncated in its node id")
    node_raw = raw[_HEADER_SIZE:end]
    node = _NODE_NAMES.get(node_raw) or _node_name(node_raw)
    return _new_tuple(Versioned, (_new_tuple(Version, (hlc, node)), None if flags & _TOMBSTONE else raw[end:]))


def decode_many(raws: Iterable[bytes]) -> list[Versioned]:
    """`decode_versioned` of each of `raws` (byte strings), in one loop."""
    out: list[Versioned] = []
    append = out.append
    names = _NODE_NAMES
    for raw in raws:
        try:
            fmt, flags, hlc, node_len = _unpack_header(raw)
        except struct.error:
            raise VersionError(f"versioned value too short ({len(raw)} bytes)") from None
        end = _HEADER_SIZE + node_len
        if fmt != _FORMAT or len(raw) < end:
            decode_versioned(raw)  # raises the precise error
        node_raw = raw[_HEADER_SIZE:end]
        node = names.get(node_raw) or _node_name(node_raw)
        append(_new_tuple(Versioned, (_new_tuple(Version, (hlc, node)), None if flags & _TOMBSTONE else raw[end:])))
    return out


class HybridClock:
    """Hybrid logical clock (Kulkarni et al.): monotonic, close to wall time, merges remote readings."""

    __slots__ = ("_node", "_last", "_wall_ms", "refused", "last_refused")

    def __init__(self, node_id: str, last_hlc: int = 0, *, wall_ms: Callable[[], int] | None = None) -> None:
        self._node = node_id
        self._last = last_hlc
        self._wall_ms = wall_ms or _wall_now_ms
        self.refused = 0  # readings not merged for being too far ahead, since the start
        self.last_refused: tuple[str, Version] | None = None  # (who sent it, the version)

    def now(self, wall_ms: int) -> Version:
        """A new version, larger than every version this clock has made or observed."""
        candidate = wall_ms << _LOGICAL_BITS
        self._last = candidate if candidate > self._last else self._last + 1
        return _new_tuple(Version, (self._last, self._node))

    def observe(self, version: Version, src: str = "") -> bool:
        """Merge a version another node's clock made, so later local versions order after it.

        A version pinned from client data (node "", a stored message's) is not a clock reading
        and is left out. A reading more than MAX_OBSERVED_AHEAD_MS ahead of this node's wall
        clock is not merged: counted in `refused`, `last_refused` says who sent it; returns False.
        """
        hlc = version.hlc
        if hlc <= self._last or not version.node:
            return True
        if hlc > (self._wall_ms() + MAX_OBSERVED_AHEAD_MS) << _LOGICAL_BITS:
            self.refused += 1
            self.last_refused = (src, version)
            return False
        self._last = hlc
        return True

    @property
    def last_hlc(self) -> int:
        return self._last


def _wall_now_ms() -> int:
    return time.time_ns() // 1_000_000
