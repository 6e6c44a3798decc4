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
    "AllShared",
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


class AllShared:
    """Shares for a core that holds every key, as do its peers (no more cores than the replication factor).

    Every key is shared with the same peers, so their digests are equal: the cache keeps one list per
    table for all of them and skips a call per write.
    """

    __slots__ = ("peers",)

    def __init__(self, peers: Sequence[str]) -> None:
        self.peers = tuple(peers)

    def __call__(self, key: bytes) -> tuple[str, ...]:
        return self.peers


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
        # table -> the one digest list every peer shares (with AllShared shares; None: look up per key)
        self._common: dict[str, list[int]] | None = None
        self._cursor: dict[str, bytes | None] = {table: None for table in self.tables}
        self._built: set[str] = set()
        # table -> key -> [reported writes not settled, newest version seen, whether that is what got committed]
        self._floating: dict[str, dict[bytes, list[Any]]] = {table: {} for table in self.tables}
        self._touched: dict[str, list[int]] = {table: [0] * BUCKETS for table in self.tables}

    def reset(self, shares: Shares, peers: Iterable[str]) -> None:
        """Drop every digest and start a build (feed it with `add_rows`); writes in flight stay tracked."""
        self._shares = shares
        peers = tuple(peers)
        if isinstance(shares, AllShared) and set(shares.peers) == set(peers):
            self._common = {table: [0] * BUCKETS for table in self.tables} if peers else {}
            self._digests = {peer: self._common for peer in peers}
        else:
            self._common = None
            self._digests = {peer: {table: [0] * BUCKETS for table in self.tables} for peer in peers}
        self._cursor = {table: None for table in self.tables}
        self._built = set()
        for floating_of in self._floating.values():
            for floating in floating_of.values():
                floating[2] = False  # a purge may have changed the committed row under the write: read it at settle

    def invalidate(self) -> None:
        """The rows changed behind the cache's back (a purge): not ready until the next `reset` and build."""
        self._built = set()

    @property
    def ready(self) -> bool:
        return len(self._built) == len(self.tables)

    def add_rows(self, table: str, rows: Sequence[tuple[bytes, Version]], *, last: bool) -> None:
        """Build input: the next committed rows of `table` in key order; `last` once the table is done."""
        floating_of = self._floating[table]
        for key, version in rows:
            if key not in floating_of:
                self._toggle(table, key, version)
        if rows:
            self._cursor[table] = rows[-1][0]
        if last:
            self._built.add(table)

    def write_started(self, table: str, key: bytes, current: Version | None, new: Version) -> None:
        """A write of `new` is about to be staged; `current` is the key's value as the store sees it (staged,
        in flight or stored), which is the committed one while no other reported write of the key floats."""
        self.writes_started(table, (key,), (current,), (new,))

    def write_settled(self, table: str, key: bytes, ok: bool, committed: Committed) -> None:
        """The write's on_durable(ok) ran. Once the key's last floating write settled, its committed version
        is the newest one seen (newer wins), so `committed` is read only after a failed commit or a reset."""
        self.writes_settled(table, (key,), ok, lambda _key: committed())

    def writes_started(self, table: str, keys: Sequence[bytes], currents: Sequence[Version | None],
                       news: Sequence[Version]) -> None:
        """`write_started(table, keys[i], currents[i], news[i])` for each i, in order."""
        touched = self._touched[table]
        floating_of = self._floating[table]
        built = table in self._built
        cursor = self._cursor[table]
        for key, current, new in zip(keys, currents, news):
            touched[_crc32(key) & _BUCKET_MASK] += 1
            floating = floating_of.get(key)
            if floating is None:
                if current is None:  # most writes: a new key
                    floating_of[key] = [1, new, True]
                    continue
                if built or (cursor is not None and key <= cursor):
                    self._toggle(table, key, current)
                floating_of[key] = [1, new if new > current else current, True]
            else:
                floating[0] += 1
                if floating[1] is None or new > floating[1]:
                    floating[1] = new

    def writes_settled(self, table: str, keys: Iterable[bytes], ok: bool,
                       committed: Callable[[bytes], Version | None]) -> None:
        """`write_settled` for one write of each of `keys`, which one commit settled; committed(key) reads a row."""
        floating_of = self._floating[table]
        built = table in self._built
        cursor = self._cursor[table]
        common = self._common
        # With AllShared shares every peer's digest of the table is this one list (None: no peers).
        target = None if common is None else common.get(table)
        pop = floating_of.pop
        for key in keys:
            floating = pop(key, None)
            if floating is None:
                continue
            if not ok:
                floating[2] = False
            if floating[0] > 1:
                floating[0] -= 1
                floating_of[key] = floating
                continue
            if not (built or (cursor is not None and key <= cursor)):
                continue
            version = floating[1] if floating[2] else committed(key)
            if version is None:
                continue
            hlc, node = version
            h = int.from_bytes(_blake2b(_pack_head(len(key), hlc) + key + node.encode(), digest_size=8).digest(),
                               "big")  # entry_hash, inline: this runs for every write
            bucket = _crc32(key) & _BUCKET_MASK
            if target is not None:
                target[bucket] ^= h
            elif common is None:
                for digests in self._targets(table, key):
                    digests[bucket] ^= h

    def touched(self, table: str, bucket: int) -> int:
        """How many writes of `table` started in `bucket` (a counter: equal readings mean no write in between)."""
        counters = self._touched.get(table)
        return 0 if counters is None else counters[bucket]

    def digests(self, peer: str) -> dict[str, list[int]]:
        return self._digests.get(peer) or {table: [0] * BUCKETS for table in self.tables}

    def in_flight(self) -> int:
        return sum(map(len, self._floating.values()))

    def _targets(self, table: str, key: bytes) -> list[list[int]]:
        """The digest lists a row of `key` counts in: one per peer sharing it (one for all, with AllShared)."""
        common = self._common
        if common is not None:
            found = common.get(table)
            return [] if found is None else [found]
        out = []
        for peer in self._shares(key):
            tables = self._digests.get(peer)
            if tables is not None:
                out.append(tables[table])
        return out

    def _toggle(self, table: str, key: bytes, version: Version | None) -> None:
        if version is None:
            return
        targets = self._targets(table, key)
        if targets:
            bucket, h = bucket_of(key), entry_hash(key, version)
            for digests in targets:
                digests[bucket] ^= h
