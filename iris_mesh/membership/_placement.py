"""Replica placement by rendezvous (highest-random-weight) hashing over a region's cores.

docs/ARCHITECTURE.md section 5: the replica set of a key is the `rf` cores with the
highest score, where

    score(key, node) = blake2b(key_bytes + b"\\x00" + node_id_bytes, digest_size=8)

read as a big-endian unsigned integer; equal scores are broken by node id
(ascending). Text keys and node ids are UTF-8 encoded.

The score is part of the on-disk contract: every node must compute the same
replica sets, and changing the function would move almost every stored key.
Rendezvous hashing moves only about rf/N of the placements when a core joins,
and when a core leaves only the sets that held it change, each by that member.
Callers pass the *expected* core set, not the visible one: a dead core stays a
replica (strict quorum), and its writes go to hints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["rendezvous_replicas", "Placement", "DEFAULT_REPLICATION_FACTOR"]

DEFAULT_REPLICATION_FACTOR = 3
_CACHED_KEYS = 4096


def _score(key_bytes: bytes, node_id: str) -> int:
    digest = hashlib.blake2b(key_bytes + b"\x00" + node_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_replicas(key: bytes | str, cores: Iterable[str], rf: int) -> list[str]:
    """The up-to-rf replicas of key among cores, best first; ValueError if rf < 1."""
    if rf < 1:
        raise ValueError(f"replication factor must be >= 1, got {rf}")
    key_bytes = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    # A core listed twice must not take two replica slots.
    unique = set(cores)
    ranked = sorted(unique, key=lambda node_id: (-_score(key_bytes, node_id), node_id))
    return ranked[:rf]


class Placement:
    """Replica sets for keys at a fixed replication factor, remembered for the latest core set.

    Not thread-safe (one engine thread). The sets of the last `_CACHED_KEYS` keys asked for
    are kept until the core set changes; with no more cores than rf every core holds every
    key, so no hashing is needed at all.
    """

    __slots__ = ("_rf", "_cores", "_every_core", "_cache")

    def __init__(self, *, replication_factor: int = DEFAULT_REPLICATION_FACTOR) -> None:
        """ValueError if replication_factor < 1."""
        if replication_factor < 1:
            raise ValueError(f"replication_factor must be >= 1, got {replication_factor}")
        self._rf = replication_factor
        self._cores: frozenset[str] = frozenset()
        self._every_core: tuple[str, ...] | None = ()  # sorted, while len(cores) <= rf
        self._cache: dict[bytes | str, tuple[str, ...]] = {}  # key -> replicas, least recently used first

    @property
    def replication_factor(self) -> int:
        return self._rf

    def replicas(self, key: bytes | str, cores: Iterable[str]) -> list[str]:
        """The replicas of key among cores (pass the expected set): best first, or every core, sorted, if at most rf."""
        unique = cores if isinstance(cores, frozenset) else frozenset(cores)
        if unique != self._cores:
            self._cores = unique
            self._every_core = tuple(sorted(unique)) if len(unique) <= self._rf else None
            self._cache.clear()
        if self._every_core is not None:
            return list(self._every_core)
        cache = self._cache
        found = cache.pop(key, None)
        if found is None:
            found = tuple(rendezvous_replicas(key, unique, self._rf))
            if len(cache) >= _CACHED_KEYS:
                del cache[next(iter(cache))]
        cache[key] = found
        return list(found)
