"""Quorum prefix scans: one page of a key range read from R replicas, merged newest-wins, with repair.

Sans-IO, like the quorum coordinator. A scan reads keys with `prefix`, in key
order, after `start_after`, at most `limit` per replica (fewer when they are
large: `ReplicaSide` cuts a page by size). The pages of the R replicas that
answered first are merged: for each key the newest version wins. A replica
that had more keys than it sent stops at its last key, so the merged
page ends at the smallest such last key (the cursor), beyond which some replica
was not read. Every replica that answered with an older version of a key in the
page (or without the key) gets a repair write, as quorum reads do.

Placement: a scan goes to one replica set, so `prefix` must lie within one
partition (see `_keys.partition_key`): an inbox scan of `user\\x00...` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from iris_mesh.store._coordinator import Outbound, ReplicaWrite
from iris_mesh.store._versioned import Versioned

__all__ = ["QuorumScanner", "ReplicaScan", "ScanDone"]


@dataclass(frozen=True, slots=True)
class ReplicaScan:
    """Ask a replica for up to `limit` (key, version) pairs with `prefix` after `start_after`, tombstones included."""

    req: int
    table: str
    prefix: bytes
    start_after: bytes | None
    limit: int


@dataclass(frozen=True, slots=True)
class ScanDone:
    """One merged page: live items in key order (tombstones left out), the cursor for the next page."""

    req: int
    ok: bool
    code: str
    detail: str
    items: tuple[tuple[bytes, Versioned], ...] = ()
    cursor: bytes | None = None
    more: bool = False


class _Scan:
    __slots__ = ("req", "table", "prefix", "start_after", "sent_to", "required", "pages", "failed", "deadline")

    def __init__(self, req: int, table: str, prefix: bytes, start_after: bytes | None,
                 sent_to: tuple[str, ...], required: int, deadline: float) -> None:
        self.req = req
        self.table = table
        self.prefix = prefix
        self.start_after = start_after
        self.sent_to = sent_to
        self.required = required
        self.pages: dict[str, tuple[list[tuple[bytes, Versioned]], bool]] = {}
        self.failed: dict[str, str] = {}
        self.deadline = deadline


class QuorumScanner:
    """Coordinates quorum prefix scans; engine thread only."""

    __slots__ = ("_r", "_timeout_s", "_scans", "_repair_ids")

    def __init__(self, *, read_quorum: int, timeout_s: float) -> None:
        if read_quorum < 1 or not timeout_s > 0:
            raise ValueError("read_quorum must be >= 1 and timeout_s > 0")
        self._r = read_quorum
        self._timeout_s = timeout_s
        self._scans: dict[int, _Scan] = {}
        # Repair writes use their own negative ids, far from the coordinator's; their acks are absorbed.
        self._repair_ids = itertools.count(-(1 << 40), -1)

    def scan(
        self, req: int, table: str, prefix: bytes, *, start_after: bytes | None, limit: int,
        replicas: Sequence[str], live: Collection[str], now: float,
    ) -> tuple[list[Outbound], list[ScanDone]]:
        if limit < 1:
            return [], [ScanDone(req, False, "bad_request", f"limit must be >= 1, got {limit}")]
        targets = tuple(node for node in replicas if node in live)
        if len(targets) < self._r:
            detail = f"only {len(targets)} of {len(replicas)} replicas live; a scan needs {self._r}"
            return [], [ScanDone(req, False, "unavailable", detail)]
        self._scans[req] = _Scan(req, table, prefix, start_after, targets, self._r, now + self._timeout_s)
        message = ReplicaScan(req, table, prefix, start_after, limit)
        return [Outbound(node, message) for node in targets], []

    def on_scan_reply(
        self, node: str, req: int, entries: list[tuple[bytes, Versioned]], more: bool, code: str, now: float
    ) -> tuple[list[Outbound], list[ScanDone]]:
        """A replica's page (sorted by key) or an error code; late and unknown replies are ignored."""
        scan = self._scans.get(req)
        if scan is None or node not in scan.sent_to or node in scan.pages or node in scan.failed:
            return [], []
        if code == "ok":
            scan.pages[node] = (entries, more)
        else:
            scan.failed[node] = code
        if len(scan.pages) >= scan.required:
            del self._scans[req]
            return self._merge(scan)
        if len(scan.pages) + len(scan.sent_to) - len(scan.pages) - len(scan.failed) < scan.required:
            del self._scans[req]
            code_out = "partition_detected" if "partition_detected" in scan.failed.values() else "unavailable"
            answers = ", ".join(f"{n} answered {c}" for n, c in scan.failed.items())
            return [], [ScanDone(req, False, code_out, f"scan cannot reach {scan.required} replies: {answers}")]
        return [], []

    def tick(self, now: float) -> list[ScanDone]:
        expired = [scan for scan in self._scans.values() if scan.deadline <= now]
        for scan in expired:
            del self._scans[scan.req]
        return [
            ScanDone(scan.req, False, "unavailable",
                     f"only {len(scan.pages)} of {scan.required} replicas answered the scan within {self._timeout_s:.1f} s")
            for scan in expired
        ]

    def pending(self) -> int:
        return len(self._scans)

    def _merge(self, scan: _Scan) -> tuple[list[Outbound], list[ScanDone]]:
        truncated = [page[-1][0] for page, more in scan.pages.values() if more and page]
        cutoff = min(truncated) if truncated else None
        newest: dict[bytes, Versioned] = {}
        held: dict[str, dict[bytes, Versioned]] = {}
        for node, (page, _more) in scan.pages.items():
            mine = held[node] = {}
            for key, item in page:
                if cutoff is not None and key > cutoff:
                    break
                mine[key] = item
                if item.newer_than(newest.get(key)):
                    newest[key] = item
        repairs: list[Outbound] = []
        for node, mine in held.items():
            for key, item in newest.items():
                if item.newer_than(mine.get(key)):
                    repairs.append(Outbound(node, ReplicaWrite(next(self._repair_ids), scan.table, key, item)))
        keys = sorted(newest)
        more = bool(truncated)
        cursor = cutoff if cutoff is not None else (keys[-1] if keys else scan.start_after)
        items = tuple((key, newest[key]) for key in keys if not newest[key].is_tombstone)
        detail = f"merged {len(scan.pages)} replicas' pages: {len(items)} live keys"
        return repairs, [ScanDone(scan.req, True, "ok", detail, items, cursor, more)]
