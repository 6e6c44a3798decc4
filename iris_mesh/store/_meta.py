"""Node metadata kept in the `meta` table: incarnation and expected core sets."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from iris_mesh.store._db import Database, StoreError

__all__ = [
    "CLOCK_SAVE_INTERVAL_S", "CLUSTER_KEY", "EXPECTED_PREFIX", "NODE_ID_KEY", "RESTORED_KEY", "ClockKeeper", "NodeMeta",
    "seed_directory",
]

_INCARNATION = b"incarnation"
# Keys a restore reads too (store/_backup.py), without opening the database for writing.
NODE_ID_KEY = b"node_id"
CLUSTER_KEY = b"cluster"
RESTORED_KEY = b"restored"  # put by a restore into each copy it puts in place; the node's next start logs and deletes it
EXPECTED_PREFIX = b"expected_cores\x00"  # + region
_FORGOTTEN_PREFIX = b"forgotten_cores\x00"  # + region
_LAST_HLC = b"last_hlc"
_DATA_SINCE = b"data_since"  # the incarnation (start, Unix ms) of the node's start that made this directory
# A restarted node's clock starts this far (in HLC units: ms << 16) above the last reading it
# saved: the node saves its clock every CLOCK_SAVE_INTERVAL_S, so this covers what it read since.
CLOCK_SAVE_INTERVAL_S = 0.5
_HLC_FLOOR_MAX = (1 << 64) - (1 << 32)  # leaves 2**32 versions
_HLC_RESTART_MARGIN = 2_000 << 16
# A reading this far past the last one saved is saved at once: a peer's clock ahead (merged, up to a minute) moves
# this node's clock faster than the wall clock, past what the margin covers.
_HLC_SAVE_JUMP = _HLC_RESTART_MARGIN // 2


class NodeMeta:
    """Reads and writes the node's identity metadata; every write is synced before it returns."""

    __slots__ = ("_db",)

    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(self, node_id: str, cluster: str) -> bool:
        """Bind the data directory to `node_id` of `cluster`; a directory of another node or cluster is refused.

        A directory written before the cluster was recorded is bound to `cluster` now. True if the directory
        was new (its data begins now: `save_data_since` with this start's incarnation).
        """
        stored = self._db.get("meta", NODE_ID_KEY)
        if stored is not None and stored.decode() != node_id:
            raise StoreError(
                f"{self._db.path} belongs to node {stored.decode()!r}, not {node_id!r}; refusing to start"
            )
        stored_cluster = self._db.get("meta", CLUSTER_KEY)
        if stored_cluster is not None and stored_cluster.decode() != cluster:
            raise StoreError(
                f"{self._db.path} holds the data of cluster {stored_cluster.decode()!r}, not {cluster!r} (the "
                "config's `cluster`); refusing to start: point `data_dir` at this cluster's data, or fix `cluster`"
            )
        if stored is None:
            self._db.put_synced("meta", NODE_ID_KEY, node_id.encode())
        if stored_cluster is None:
            self._db.put_synced("meta", CLUSTER_KEY, cluster.encode())
        return stored is None

    def bump_incarnation(self, now: float) -> int:
        """Return a new incarnation, larger than any earlier start of this node.

        It is the start time in Unix milliseconds (`now`: Unix seconds), or one
        more than the stored one if that is higher (a clock set back).
        The clock keeps it growing when the stored one is older than what peers saw, after
        `meshctl restore` or with a new data directory: peers ignore a node whose
        incarnation went back until it passes the one they knew.
        """
        raw = self._db.get("meta", _INCARNATION)
        stored = int.from_bytes(raw, "big") if raw else 0
        incarnation = max(stored + 1, int(now * 1000))
        self._db.put_synced("meta", _INCARNATION, incarnation.to_bytes(8, "big"))
        return incarnation

    def clock_floor(self) -> int:
        """An HLC reading above every version this node made before it stopped (0 on first start)."""
        raw = self._db.get("meta", _LAST_HLC)
        # Never past what a version can hold (a reading saved from a clock once dragged to the end of time).
        return min(int.from_bytes(raw, "big") + _HLC_RESTART_MARGIN, _HLC_FLOOR_MAX) if raw else 0

    def save_clock(self, hlc: int) -> None:
        """Remember the clock's reading (not fsync'd: survives a process kill; the margin covers the rest)."""
        self._db.write([("meta", _LAST_HLC, hlc.to_bytes(8, "big"))])

    def take_restore_note(self) -> dict[str, str] | None:
        """What `meshctl restore` noted in this directory (the backup it came from, when), once; None if nothing."""
        raw = self._db.get("meta", RESTORED_KEY)
        if raw is None:
            return None
        self._db.write([("meta", RESTORED_KEY, None)])
        try:
            note = json.loads(raw)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in note.items()} if isinstance(note, dict) else {}

    def expected_cores(self, region: str) -> list[str]:
        raw = self._db.get("meta", EXPECTED_PREFIX + region.encode())
        return sorted(json.loads(raw)) if raw else []

    def save_expected_cores(self, region: str, cores: frozenset[str] | set[str]) -> None:
        self._db.put_synced("meta", EXPECTED_PREFIX + region.encode(), json.dumps(sorted(cores)).encode())

    def data_since(self) -> int:
        """When this directory's data began: the incarnation (start time, Unix ms) of the start that made it (for
        a restored one, of the node it was backed up from); 0 for a directory made before this was recorded."""
        raw = self._db.get("meta", _DATA_SINCE)
        return int.from_bytes(raw, "big") if raw else 0

    def save_data_since(self, incarnation: int) -> None:
        self._db.put_synced("meta", _DATA_SINCE, incarnation.to_bytes(8, "big"))

    def seed(self, *, incarnation: int, last_hlc: int) -> None:
        """Start a new directory from a run on another one: the next start's incarnation and clock are above
        these. The directory stays unclaimed (a new directory: its data begins at the next start)."""
        self._db.write([("meta", _INCARNATION, incarnation.to_bytes(8, "big")),
                        ("meta", _LAST_HLC, last_hlc.to_bytes(8, "big"))])
        self._db.flush_wal_synced()

    def forgotten_cores(self, region: str, now_ms: int) -> dict[str, int]:
        """Cores an operator forgot (`meshctl forget`) and not let back in since -> when (Unix ms): left out of
        the expected set at start, even where the config lists them. One saved without its time (an earlier
        version) counts as forgotten `now_ms`."""
        raw = self._db.get("meta", _FORGOTTEN_PREFIX + region.encode())
        saved = json.loads(raw) if raw else {}
        if isinstance(saved, list):
            return {str(node): now_ms for node in saved}
        return {str(node): int(at) for node, at in saved.items()}

    def save_forgotten_cores(self, region: str, cores: Mapping[str, int]) -> None:
        saved = json.dumps(dict(sorted(cores.items()))).encode()
        self._db.put_synced("meta", _FORGOTTEN_PREFIX + region.encode(), saved)


def seed_directory(data_dir: Path, *, incarnation: int, last_hlc: int) -> None:
    """Make `data_dir` (new) a directory whose first start continues a run on another one (`NodeMeta.seed`)."""
    db = Database(data_dir)
    try:
        NodeMeta(db).seed(incarnation=incarnation, last_hlc=last_hlc)
    finally:
        db.close()


class ClockKeeper:
    """Saves a clock's reading often enough that a restart's floor (the last saved + the margin) is above every
    version the node made: every CLOCK_SAVE_INTERVAL_S, and at once when the clock ran ahead of that (a merged
    reading of a peer whose clock is ahead). Engine thread only."""

    __slots__ = ("_meta", "_reading", "_saved", "_next_at")

    def __init__(self, meta: NodeMeta, reading: Callable[[], int]) -> None:
        self._meta = meta
        self._reading = reading
        self._saved = -1
        self._next_at = 0.0

    def async_check(self, now: float) -> None:
        """Save if due (call every loop turn, after its work and before its writes are committed)."""
        hlc = self._reading()
        if now >= self._next_at or hlc - self._saved > _HLC_SAVE_JUMP:
            self.save(now)

    def save(self, now: float) -> None:
        hlc = self._reading()
        self._meta.save_clock(hlc)
        self._saved = hlc
        self._next_at = now + CLOCK_SAVE_INTERVAL_S
