"""Key-level repair of one anti-entropy session, sans-IO: which rows to push and which to pull."""

from __future__ import annotations

from dataclasses import dataclass

from iris_mesh.store._versioned import Version, Versioned

__all__ = ["Listed", "Reconciler"]


@dataclass(frozen=True, slots=True)
class Listed:
    """One row of the responder's listing."""

    version: Version
    tombstone: bool


class Reconciler:
    """The initiator's side of one session: the responder's listing against its own rows of the same buckets.

    Only strictly newer versions move, in either direction. A key whose newer version
    was written at or after `settle_before_ms` is left alone: the write path is still
    delivering it, and a later round repairs it if it really went missing. A tombstone
    older than `purge_before_ms` is not sent to a side that has no row at all: it is
    due for purging there anyway, and sending it would only bring it back.
    """

    def __init__(self, theirs: dict[tuple[str, bytes], Listed], *, purge_before_ms: int,
                 settle_before_ms: int | None = None) -> None:
        self._theirs = theirs
        self._purge_before_ms = purge_before_ms
        self._settle_before_ms = settle_before_ms
        self.pulls: list[tuple[str, bytes]] = []
        self.unsettled = 0  # keys left to the write path

    def own_row(self, table: str, key: bytes, item: Versioned) -> bool:
        """Feed one of our rows; True if it must be pushed (pulls collect in `pulls`)."""
        other = self._theirs.pop((table, key), None)
        if other is None:
            return not self._recent(item.version) and not (item.is_tombstone and self._purgeable(item.version))
        if item.version > other.version:
            return not self._recent(item.version)
        if other.version > item.version and not self._recent(other.version):
            self.pulls.append((table, key))
        return False

    def finish(self) -> list[tuple[str, bytes]]:
        """After the last own row: every pull, including the rows only the responder has."""
        for (table, key), other in self._theirs.items():
            if not self._recent(other.version) and not (other.tombstone and self._purgeable(other.version)):
                self.pulls.append((table, key))
        self._theirs = {}
        return self.pulls

    def _recent(self, version: Version) -> bool:
        if self._settle_before_ms is None or version.wall_ms < self._settle_before_ms:
            return False
        self.unsettled += 1
        return True

    def _purgeable(self, version: Version) -> bool:
        return version.wall_ms < self._purge_before_ms
