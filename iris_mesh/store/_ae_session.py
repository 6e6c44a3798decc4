"""What anti-entropy sessions are made of, for their initiator and responder alike.

The port their frames leave by, the membership view they are compared under, the
chunked table scans that read their rows, the `{table: [bucket]}` lists their frames
carry, and the initiator's state and result of one session. The frames themselves
are described in `_anti_entropy.py`; everything here is used on the engine thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from iris_mesh.store._digests import BUCKETS, Shares
from iris_mesh.store._reconcile import Reconciler
from iris_mesh.store._versioned import Versioned

if TYPE_CHECKING:
    from iris_mesh.store._local import LocalStore

__all__ = [
    "PULL_FRAME_KEYS",
    "SCAN_CHUNK_ROWS",
    "AntiEntropyPort",
    "Session",
    "SessionResult",
    "TableScan",
    "View",
    "bucket_lists",
]

SCAN_CHUNK_ROWS = 256
# Keys per ae_pull frame: the initiator asks for no more at once, and the responder serves no more.
PULL_FRAME_KEYS = 500


class AntiEntropyPort(Protocol):
    """What anti-entropy, its driver and its responder, needs from the store service (engine thread)."""

    def ae_send(self, node: str, op: str, **fields: Any) -> None:
        """Queue a frame; it leaves after this turn's sput frames."""

    def ae_send_list(self, node: str, op: str, field: str, entries: list[list[Any]], **fields: Any) -> None:
        """Queue `entries` as frames under the frame budget, each with `fields`."""

    def ae_push(self, node: str, table: str, key: bytes, item: Versioned) -> int:
        """Send `item` as a replica write with an internal request id (returned).

        Its ack comes to `AntiEntropy.async_on_ack`.
        """


@dataclass(frozen=True, slots=True)
class View:
    """The expected core set sessions are compared under, its fingerprint (`fp`), and who shares each key."""

    expected: frozenset[str]
    fp: int
    shares: Shares


@dataclass(frozen=True, slots=True)
class SessionResult:
    """What one session did, from its initiator's side."""

    peer: str
    code: str  # ok | in_sync, or timeout | peer_down | peer_restarted | partition_detected | not_ready | ...
    full: bool
    buckets: int  # buckets that differed (every bucket for a full pass)
    listed: int  # rows the peer listed
    pushed: int  # our rows the peer applied (acked ok)
    pulled: int  # rows the peer pushed to us
    refused: int  # our pushes the peer refused (safe mode, ...)
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.code in ("ok", "in_sync")

    def as_dict(self) -> dict[str, Any]:
        return {"peer": self.peer, "code": self.code, "ok": self.ok, "full": self.full, "buckets": self.buckets,
                "listed": self.listed, "pushed": self.pushed, "pulled": self.pulled, "refused": self.refused,
                "duration_s": round(self.duration_s, 3)}


class TableScan:
    """Walks some tables in key order, one chunk of committed rows per step."""

    __slots__ = ("_local", "_tables", "_cursor", "_on_rows", "_on_done", "blocked", "cancelled")

    def __init__(
        self,
        local: LocalStore,
        tables: Sequence[str],
        on_rows: Callable[[str, list[tuple[bytes, Versioned]], bool], None],
        on_done: Callable[[], None],
        blocked: Callable[[], bool] = lambda: False,
    ) -> None:
        self.blocked = blocked  # while True, the scan waits (flow control)
        self._local = local
        self._tables = deque(tables)
        self._cursor: dict[str, bytes] = {}
        self._on_rows = on_rows
        self._on_done = on_done
        self.cancelled = False

    def step(self) -> bool:
        """Read and hand over one chunk; True once every table is done."""
        if self.cancelled:
            return True
        if not self._tables:
            self._on_done()
            return True
        table = self._tables[0]
        rows = self._local.scan(table, start_after=self._cursor.get(table), limit=SCAN_CHUNK_ROWS)
        last = len(rows) < SCAN_CHUNK_ROWS
        if rows:
            self._cursor[table] = rows[-1][0]
        self._on_rows(table, rows, last)
        if last:
            self._tables.popleft()
            if not self._tables:
                self._on_done()
                return True
        return False


class Session:
    """The initiator's state of one session."""

    __slots__ = ("sid", "peer", "full", "routine", "state", "started", "deadline", "recheck_at", "first_diff",
                 "touched", "merge", "compared_unsaid", "buckets", "pushes", "pull_queue", "pulls_out",
                 "listing_done", "listed", "pushed", "pulled", "refused", "unsettled", "scan", "waiters", "partial")

    def __init__(self, sid: int, peer: str, full: bool, routine: bool, now: float, timeout_s: float) -> None:
        self.sid = sid
        self.peer = peer
        self.full = full
        self.routine = routine  # a round-robin visit: leaves fresh writes to the write path, backs off when idle
        # digest (round 1) -> recheck -> listing (round 2 sent) -> merging (their listing against our scan) -> repairing
        # ("ended": by the peer's ae_end, as it finishes)
        self.state = "digest"
        self.started = now
        self.deadline = now + timeout_s
        self.recheck_at = 0.0
        self.first_diff: dict[str, list[int]] = {}
        self.touched: dict[str, list[int]] = {}  # our write counters of first_diff's buckets at round 1
        self.merge: Reconciler | None = None
        self.compared_unsaid = 0  # listed rows compared and not yet told to the peer (ae_more)
        self.buckets: dict[str, set[int]] = {}
        self.pushes: set[int] = set()
        self.pull_queue: deque[tuple[str, bytes]] = deque()
        self.pulls_out = 0
        self.listing_done = False
        self.listed = self.pushed = self.pulled = self.refused = self.unsettled = 0
        self.scan: TableScan | None = None  # our own rows of the differing buckets
        self.waiters: list[Callable[[SessionResult], None]] = []
        # A routine round 2 left differing buckets busy with writes unlisted: this session did not compare all.
        self.partial = False


def bucket_lists(raw: Any) -> dict[str, list[int]] | None:
    """{table: [bucket]} from a frame, or None if malformed."""
    if not isinstance(raw, dict):
        return None
    out: dict[str, list[int]] = {}
    for table, buckets in raw.items():
        if not isinstance(table, str) or not isinstance(buckets, list):
            return None
        if not all(isinstance(b, int) and 0 <= b < BUCKETS for b in buckets):
            return None
        if buckets:
            out[table] = buckets
    return out
