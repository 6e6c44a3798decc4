"""Anti-entropy digests: what two replicas compare to find the keys they disagree on. Sans-IO.

Placement is rendezvous hashing, so there are no key ranges: cores A and B compare
exactly the keys whose replica set holds both (their *shared* keys). Each user
table's shared keys fall into BUCKETS buckets by crc32 of the key; a bucket's
digest is the XOR of a 64-bit blake2b of (key, version) over its rows,
tombstones included. Equal digests mean (up to hash collisions) equal versions.

Digests are not computed per session: `DigestCache` keeps them current on every
write (a full scan costs ~5 us a row, 0.5 s per 100k rows), and is built from disk
at start, when the expected core set changes and after a tombstone purge (the
driver in `_anti_entropy.py` feeds it, through `_ae_upkeep.py`).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from iris_mesh.store._versioned import Version

__all__ = [
    "BUCKETS",
    "Committed",
    "DigestCache",
    "Shares",
    "bucket_of",
    "differing",
    "entry_hash",
    "pack_digests",
    "unpack_digests",
]

BUCKETS = 1024
_HASH_HEAD = struct.Struct(">IQ")
_DIGESTS = struct.Struct(f">{BUCKETS}Q")

# key -> the other cores that replicate it together with this one (empty if this core is not a replica).
Shares = Callable[[bytes], Sequence[str]]
# Reads a key's committed version (None: no row).
Committed = Callable[[], "Version | None"]


# ---- sans-IO: digests ------------------------------------------------------------------------


_BUCKET_MASK = BUCKETS - 1
_crc32 = zlib.crc32
_blake2b = hashlib.blake2b
_pack_head = _HASH_HEAD.pack


def bucket_of(key: bytes) -> int:
    return _crc32(key) & _BUCKET_MASK


def entry_hash(key: bytes, version: Version) -> int:
    """64-bit hash of a row's identity: the key and its version (value bytes are implied by the version)."""
    hlc, node = version
    data = b"".join((_pack_head(len(key), hlc), key, node.encode()))
    return int.from_bytes(_blake2b(data, digest_size=8).digest(), "big")


def pack_digests(digests: Mapping[str, Sequence[int]]) -> dict[str, bytes]:
    return {table: _DIGESTS.pack(*values) for table, values in digests.items()}


def unpack_digests(raw: Any) -> dict[str, list[int]]:
    """ValueError unless `raw` maps table names to BUCKETS packed digests."""
    if not isinstance(raw, dict):
        raise ValueError("digests must be a map")
    out: dict[str, list[int]] = {}
    for table, packed in raw.items():
        if not isinstance(table, str) or not isinstance(packed, bytes) or len(packed) != _DIGESTS.size:
            raise ValueError("bad digest entry")
        out[table] = list(_DIGESTS.unpack(packed))
    return out


def differing(
    mine: Mapping[str, Sequence[int]],
    theirs: Mapping[str, Sequence[int]],
    only: Mapping[str, Collection[int]] | None = None,
) -> dict[str, list[int]]:
    """Buckets whose digests differ, per table (tables absent on one side count as empty); restricted to `only`."""
    out: dict[str, list[int]] = {}
    zeros = (0,) * BUCKETS
    for table in sorted(set(mine) | set(theirs)):
        a, b = mine.get(table, zeros), theirs.get(table, zeros)
        allowed = None if only is None else only.get(table, ())
        buckets = [i for i in range(BUCKETS) if a[i] != b[i] and (allowed is None or i in allowed)]
        if buckets:
            out[table] = buckets
    return out


class DigestCache:
    """Bucket digests per (peer, table) of the rows this core shares with each peer, kept current on every write.

    Invariant: a key's hash is in the digests iff the build scan has passed the key and
    no write of it is in flight. So every write of a user table must be reported:
    `write_started` (or `writes_started`) when it is staged, before anything else of the
    cache runs, in staging order, and `write_settled` (or `writes_settled`) when its
    on_durable callback ran (then the committed row is final until the next write).
    """

    def __init__(self, tables: Sequence[str]) -> None:
        self.tables = tuple(tables)
        self._shares: Shares = lambda key: ()
        self._digests: dict[str, dict[str, list[int]]] = {}
        self._cursor: dict[str, bytes | None] = {table: None for table in self.tables}
        self._built: set[str] = set()
        # (table, key) -> [reported writes not settled, newest version seen, whether that is what got committed]
        self._floating: dict[tuple[str, bytes], list[Any]] = {}
        self._touched: dict[str, list[int]] = {table: [0] * BUCKETS for table in self.tables}

    def reset(self, shares: Shares, peers: Iterable[str]) -> None:
        """Drop every digest and start a build (feed it with `add_rows`); writes in flight stay tracked."""
        self._shares = shares
        self._digests = {peer: {table: [0] * BUCKETS for table in self.tables} for peer in peers}
        self._cursor = {table: None for table in self.tables}
        self._built = set()
        for floating in self._floating.values():
            floating[2] = False  # a purge may have changed the committed row under the write: read it at settle

    @property
    def ready(self) -> bool:
        return len(self._built) == len(self.tables)

    def add_rows(self, table: str, rows: Sequence[tuple[bytes, Version]], *, last: bool) -> None:
        """Build input: the next committed rows of `table` in key order; `last` once the table is done."""
        for key, version in rows:
            if (table, key) not in self._floating:
                self._toggle(table, key, version)
        if rows:
            self._cursor[table] = rows[-1][0]
        if last:
            self._built.add(table)

    def write_started(self, table: str, key: bytes, current: Version | None, new: Version) -> None:
        """A write of `new` is about to be staged; `current` is the key's value as the store sees it (staged,
        in flight or stored), which is the committed one while no other reported write of the key floats."""
        ident = (table, key)
        self._touched[table][_crc32(key) & _BUCKET_MASK] += 1
        floating = self._floating.get(ident)
        if floating is None:
            if current is not None and self._passed(table, key):
                self._toggle(table, key, current)
            self._floating[ident] = [1, new if current is None or new > current else current, True]
            return
        floating[0] += 1
        if floating[1] is None or new > floating[1]:
            floating[1] = new

    def write_settled(self, table: str, key: bytes, ok: bool, committed: Committed) -> None:
        """The write's on_durable(ok) ran. Once the key's last floating write settled, its committed version
        is the newest one seen (newer wins), so `committed` is read only after a failed commit or a reset."""
        ident = (table, key)
        floating = self._floating.get(ident)
        if floating is None:
            return
        if not ok:
            floating[2] = False
        if floating[0] > 1:
            floating[0] -= 1
            return
        del self._floating[ident]
        if self._passed(table, key):
            self._toggle(table, key, floating[1] if floating[2] else committed())

    def writes_started(self, table: str, keys: Sequence[bytes], currents: Sequence[Version | None],
                       news: Sequence[Version]) -> None:
        """`write_started(table, keys[i], currents[i], news[i])` for each i, in order."""
        touched = self._touched[table]
        floating_of = self._floating
        built = table in self._built
        cursor = self._cursor[table]
        for key, current, new in zip(keys, currents, news):
            ident = (table, key)
            touched[_crc32(key) & _BUCKET_MASK] += 1
            floating = floating_of.get(ident)
            if floating is None:
                if current is not None and (built or (cursor is not None and key <= cursor)):
                    self._toggle(table, key, current)
                floating_of[ident] = [1, new if current is None or new > current else current, True]
            else:
                floating[0] += 1
                if floating[1] is None or new > floating[1]:
                    floating[1] = new

    def writes_settled(self, table: str, keys: Iterable[bytes], ok: bool,
                       committed: Callable[[bytes], Version | None]) -> None:
        """`write_settled` for one write of each of `keys`, which one commit settled; committed(key) reads a row."""
        floating_of = self._floating
        built = table in self._built
        cursor = self._cursor[table]
        shares = self._shares
        digests = self._digests
        for key in keys:
            ident = (table, key)
            floating = floating_of.get(ident)
            if floating is None:
                continue
            if not ok:
                floating[2] = False
            if floating[0] > 1:
                floating[0] -= 1
                continue
            del floating_of[ident]
            if not (built or (cursor is not None and key <= cursor)):
                continue
            version = floating[1] if floating[2] else committed(key)
            if version is None:
                continue
            peers = shares(key)
            if not peers:
                continue
            hlc, node = version
            h = int.from_bytes(_blake2b(b"".join((_pack_head(len(key), hlc), key, node.encode())), digest_size=8)
                               .digest(), "big")  # entry_hash, inline: this runs for every write
            bucket = _crc32(key) & _BUCKET_MASK
            for peer in peers:
                tables = digests.get(peer)
                if tables is not None:
                    tables[table][bucket] ^= h

    def touched(self, table: str, bucket: int) -> int:
        """How many writes of `table` started in `bucket` (a counter: equal readings mean no write in between)."""
        counters = self._touched.get(table)
        return 0 if counters is None else counters[bucket]

    def digests(self, peer: str) -> dict[str, list[int]]:
        return self._digests.get(peer) or {table: [0] * BUCKETS for table in self.tables}

    def in_flight(self) -> int:
        return len(self._floating)

    def _passed(self, table: str, key: bytes) -> bool:
        if table in self._built:
            return True
        cursor = self._cursor[table]
        return cursor is not None and key <= cursor

    def _toggle(self, table: str, key: bytes, version: Version | None) -> None:
        if version is None:
            return
        peers = self._shares(key)
        if not peers:
            return
        bucket, h = bucket_of(key), entry_hash(key, version)
        for peer in peers:
            tables = self._digests.get(peer)
            if tables is not None:
                tables[table][bucket] ^= h
