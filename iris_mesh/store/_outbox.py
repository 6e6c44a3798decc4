"""Outgoing store frames besides replica writes: batches cut to the frame budget, and anti-entropy's way out.

The service queues reads, values, scans, pages and anti-entropy frames for the loop turn
and sends them once it ends; `frame_chunks` keeps each frame within `FRAME_BUDGET_BYTES`.
Engine thread only.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from iris_mesh.store._frames import FRAME_BUDGET_BYTES, SYNC, WriteSender
from iris_mesh.store._versioned import Versioned, encode_versioned

__all__ = ["AntiEntropyOutlet", "frame_chunks"]

_ENTRY_OVERHEAD_BYTES = 32


def _entry_size(entry: list[Any]) -> int:
    """Bytes of the entry's strings, those in nested lists (a scan page's rows) included, plus some for the rest."""
    return _ENTRY_OVERHEAD_BYTES + sum(len(part) if isinstance(part, (bytes, str))
                                       else _entry_size(part) if isinstance(part, list) else 0 for part in entry)


def frame_chunks(entries: list[list[Any]], size: Callable[[list[Any]], int] = _entry_size) -> list[list[list[Any]]]:
    """Split a batch so that no frame outgrows the frame budget."""
    sizes = list(map(size, entries))
    if sum(sizes) <= FRAME_BUDGET_BYTES:
        return [entries]
    chunks: list[list[list[Any]]] = []
    current: list[list[Any]] = []
    total = 0
    for entry, entry_size in zip(entries, sizes):
        if current and total + entry_size > FRAME_BUDGET_BYTES:
            chunks.append(current)
            current, total = [], 0
        current.append(entry)
        total += entry_size
    if current:
        chunks.append(current)
    return chunks


class AntiEntropyOutlet:
    """Anti-entropy's way out (its port): frames queued behind the turn's writes, repairs as internal replica writes."""

    __slots__ = ("_out_ae", "_writes", "_internal_ids", "_counters", "_turn_now")

    def __init__(self, *, out_ae: list[tuple[str, str, dict[str, Any]]], writes: WriteSender,
                 internal_ids: Iterator[int], counters: dict[str, int], turn_now: Callable[[], float]) -> None:
        self._out_ae = out_ae
        self._writes = writes
        self._internal_ids = internal_ids
        self._counters = counters
        self._turn_now = turn_now  # the time of the current loop turn

    def ae_send(self, node: str, op: str, **fields: Any) -> None:
        self._out_ae.append((node, op, fields))

    def ae_send_list(self, node: str, op: str, field: str, entries: list[list[Any]], **fields: Any) -> None:
        for chunk in frame_chunks(entries):
            self._out_ae.append((node, op, {**fields, field: chunk}))

    def ae_push(self, node: str, table: str, key: bytes, item: Versioned) -> int:
        req = next(self._internal_ids)
        self._writes.add((node,), table, (), SYNC, req, key, encode_versioned(item), self._turn_now())
        self._counters["ae_repairs_sent"] += 1
        return req
