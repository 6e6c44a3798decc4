"""A node's local journal: small records in its own `meta` table that outlive a restart of the node.

For what only this node needs after a restart and what would cost a quorum
write to keep anywhere else: the deletes of acked messages the store refused,
which an edge tries again (`messaging/_deletes.py`). Each record is one small
RocksDB write without an fsync: it survives the process dying (SIGKILL, a
crash), not the machine losing power, and costs the engine thread microseconds,
not a disk sync. A write that fails is logged and counted, never raised: the
journal only spares work after a restart, and the node goes on without it.
"""

from __future__ import annotations

from loguru import logger

from iris_mesh.store._db import Database

__all__ = ["LocalJournal"]

_PREFIX = b"journal\x00"
_LOG_EVERY = 1000  # failed writes: the first and every 1000th are logged


class LocalJournal:
    """Records (key -> value) of one name in the node's own database. Thread-safe as RocksDB is."""

    __slots__ = ("_db", "_prefix", "_name", "failures")

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self._name = name
        self._prefix = _PREFIX + name.encode() + b"\x00"
        self.failures = 0  # writes that failed

    def put(self, key: bytes, value: bytes = b"") -> None:
        self._write(key, value)

    def delete(self, key: bytes) -> None:
        self._write(key, None)

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every record, in key order."""
        cut = len(self._prefix)
        return [(key[cut:], value) for key, value in self._db.iterate("meta", prefix=self._prefix)]

    def _write(self, key: bytes, value: bytes | None) -> None:
        try:
            self._db.write([("meta", self._prefix + key, value)])
        except Exception as exc:
            self.failures += 1
            if self.failures % _LOG_EVERY == 1:
                logger.warning("the node's {} journal could not be written ({}; {} failures so far): the work it "
                               "keeps goes on, but a restart of the node forgets it", self._name, exc, self.failures)
