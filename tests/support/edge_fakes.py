"""Fakes for the sans-IO tests of EdgeService: message ids and a store whose answers wait for the test."""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iris_mesh.store import Version

__all__ = ["Answer", "FakeStore", "Row", "mid"]


def mid(n: int) -> bytes:
    """Message id n: ids of larger n sort after, as the ids of one client do."""
    return n.to_bytes(16, "big")


@dataclass(frozen=True, slots=True)
class Row:
    value: bytes
    version: Version = Version(0, "")


@dataclass(frozen=True, slots=True)
class Answer:
    """What the store hands a put's or a scan's on_done."""

    ok: bool
    code: str = "ok"
    detail: str = ""
    items: list[tuple[bytes, Row]] = field(default_factory=list)
    more: bool = False
    cursor: bytes | None = None


class FakeStore:
    """Tables in dicts. Every answer waits in a queue, in request order, until run() (run_newest() lets the newest
    overtake); refuse_next_put fails one write. Writes are versioned as the real store's: one not newer than the
    key's last (a pinned `version`) changes nothing; a row put in `tables` by a test is of version (0, "")."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[bytes, bytes]] = collections.defaultdict(dict)
        self._waiting: collections.deque[Callable[[], None]] = collections.deque()
        self._refusals: dict[str, list[str]] = collections.defaultdict(list)
        self.puts: list[tuple[str, bytes, bytes | None]] = []  # every write asked for, in order
        # A scan reads its rows when it is answered; with this set, when it is asked (as a replica that reads
        # at once and answers late does), so a write answered in between is not in it.
        self.scans_read_when_asked = False
        self.scans = 0  # scans asked for
        # With this set a delete leaves a tombstone, as the real store's do until they are purged: a scan reads
        # it and counts it in its page, but does not return it.
        self.tombstones = False
        self.dead: dict[str, set[bytes]] = collections.defaultdict(set)
        self.rows_scanned = 0  # rows (tombstones included) the scans read
        self.unreadable: set[str] = set()  # tables whose scans are refused (`unavailable`) while they are in it
        self.versions: dict[str, dict[bytes, Version]] = collections.defaultdict(dict)  # of rows and tombstones
        self._clock = 0

    def refuse_next_put(self, table: str, code: str) -> None:
        self._refusals[table].append(code)

    def async_put(self, table: str, key: bytes, value: bytes | None, *, durability: str,
                  on_done: Callable[[Any], None], now: float, min_hlc: int = 0, version: Any = None) -> None:
        self.puts.append((table, key, value))
        refusal = self._refusals[table].pop(0) if self._refusals[table] else None

        def answer() -> None:
            if refusal is not None:
                on_done(Answer(False, refusal, f"{table} write refused by the test"))
                return
            self._clock += 1
            written = version or Version(max(self._clock, min_hlc + 1), "store")
            if key in self.versions[table] and written <= self.versions[table][key]:
                on_done(Answer(True))  # not newer: the write is a no-op
                return
            self.versions[table][key] = written
            if value is None:
                self.tables[table].pop(key, None)
                if self.tombstones:
                    self.dead[table].add(key)
            else:
                self.tables[table][key] = value
                self.dead[table].discard(key)
            on_done(Answer(True))

        self._waiting.append(answer)

    def refuse_next_scan(self, table: str, code: str) -> None:
        self._refusals["scan:" + table].append(code)

    def async_scan(self, table: str, prefix: bytes, *, start_after: bytes | None, limit: int,
                   on_done: Callable[[Any], None], now: float) -> None:
        self.scans += 1
        refusals = self._refusals["scan:" + table]
        if refusals or table in self.unreadable:
            code = refusals.pop(0) if refusals else "unavailable"
            self._waiting.append(lambda: on_done(Answer(False, code, f"{table} scan refused by the test")))
            return

        def read() -> Answer:
            rows = self.tables[table].keys() | self.dead[table]
            keys = sorted(k for k in rows if k.startswith(prefix) and (start_after is None or k > start_after))
            page = keys[:limit]
            self.rows_scanned += len(page)
            versions = self.versions[table]
            items = [(k, Row(self.tables[table][k], versions.get(k, Version(0, "")))) for k in page
                     if k in self.tables[table]]
            return Answer(True, items=items, more=len(keys) > limit, cursor=page[-1] if page else start_after)

        if self.scans_read_when_asked:
            answer = read()
            self._waiting.append(lambda: on_done(answer))
        else:
            self._waiting.append(lambda: on_done(read()))

    @property
    def pending(self) -> bool:
        """Whether some answer waits for run()."""
        return bool(self._waiting)

    def run_one(self) -> None:
        """Answer the oldest request waiting."""
        self._waiting.popleft()()

    def run_newest(self) -> None:
        """Answer the newest request waiting (it overtakes the older ones)."""
        self._waiting.pop()()

    def run(self) -> None:
        """Answer everything asked so far, and whatever those answers ask in turn."""
        while self._waiting:
            self._waiting.popleft()()
