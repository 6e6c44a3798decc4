"""Replica writes and their acks on the mesh, batched per loop turn. Engine thread only.

    sput  {w: [[table, hint_for, flags, reqs, rows], ...]}
    sack  {k: [req, ...], a: [[req, code], ...]}

A `sput` group holds the writes of one table with the same `hint_for` (replicas
the receiver keeps durable hints for) and `flags` (`SYNC`: fsync before the ack;
`FRESH`: a client's own write, which a full partition may refuse). `reqs[i]` is
the request id of the row `rows[2i]` (key), `rows[2i + 1]` (the versioned value,
see `_versioned.py`): flat lists decode and encode several times faster than a
list per write. Queued writes for the same set of replicas share a frame, encoded
once for all of them; `WriteSender` decides when a frame leaves.

A `sack` answers many writes: `k` lists the requests applied (or superseded by a
newer version) and durable, `a` every other answer with its error code.

Frames are cut so that none outgrows `FRAME_BUDGET_BYTES` (well under the mesh's
`max_frame_bytes`).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from iris_mesh.store._versioned import Versioned, VersionError, decode_many

__all__ = [
    "FRAME_BUDGET_BYTES",
    "FRESH",
    "SYNC",
    "AckBatcher",
    "WriteBatcher",
    "WriteGroup",
    "WriteSender",
    "parse_write_groups",
]

SYNC = 1
FRESH = 2
FRAME_BUDGET_BYTES = 256 * 1024
_GROUP_OVERHEAD_BYTES = 64
_ROW_OVERHEAD_BYTES = 16  # a request id and two byte-string headers, with room to spare
_ACK_BYTES = 10  # a request id up to 2**64
_ACKS_PER_FRAME = FRAME_BUDGET_BYTES // _ACK_BYTES
_FAILURES_PER_FRAME = FRAME_BUDGET_BYTES // 64
_TEXT, _INTEGER, _BYTES = frozenset({str}), frozenset({int}), frozenset({bytes})

# (table, hint_for, flags, reqs, keys, items, the items' encodings): one request per key
WriteGroup = tuple[str, tuple[str, ...], int, list[int], list[bytes], list[Versioned], list[bytes]]


class _Frame:
    __slots__ = ("groups", "size", "rows", "opened_at")

    def __init__(self, opened_at: float) -> None:
        # (table, hint_for, flags) -> [table, hint_for as a list, flags, reqs, rows]: a group as it goes on the wire
        self.groups: dict[tuple[str, tuple[str, ...], int], list[Any]] = {}
        self.size = 0
        self.rows = 0
        self.opened_at = opened_at  # when its first write was queued


Ready = Callable[[tuple[str, ...], int, float], bool]


class WriteBatcher:
    """Queued replica writes, as sput frames per set of destination nodes.

    A frame that filled up leaves at the next `take`; the last (open) frame of a node set
    leaves when `ready(nodes, rows, opened_at)` says so, or with `drain`.
    """

    __slots__ = ("_frames",)

    def __init__(self) -> None:
        self._frames: dict[tuple[str, ...], list[_Frame]] = {}

    def __bool__(self) -> bool:
        return bool(self._frames)

    def add(self, nodes: tuple[str, ...], table: str, hint_for: tuple[str, ...], flags: int, req: int, key: bytes,
            raw: bytes, now: float = 0.0) -> None:
        """Queue one write (`raw`: the encoded Versioned) for every node of `nodes`."""
        frames = self._frames.get(nodes)
        if frames is None:
            frame = _Frame(now)
            self._frames[nodes] = [frame]
        else:
            frame = frames[-1]
        size = _ROW_OVERHEAD_BYTES + len(key) + len(raw)
        if frame.size + size > FRAME_BUDGET_BYTES and frame.groups:
            frame = _Frame(now)
            self._frames[nodes].append(frame)
        frame.rows += 1
        group_key = (table, hint_for, flags)
        group = frame.groups.get(group_key)
        if group is None:
            group = frame.groups[group_key] = [table, list(hint_for), flags, [], []]
            frame.size += _GROUP_OVERHEAD_BYTES + len(table) + sum(map(len, hint_for))
        group[3].append(req)
        rows = group[4]
        rows.append(key)
        rows.append(raw)
        frame.size += size

    def drain(self) -> list[tuple[tuple[str, ...], list[list[Any]], int]]:
        """(nodes, groups, rows) of every frame queued, oldest first; the batcher is empty afterwards."""
        return self.take(lambda nodes, rows, opened_at: True)

    def take(self, ready: Ready) -> list[tuple[tuple[str, ...], list[list[Any]], int]]:
        """(nodes, groups, rows) of the frames that may leave: every full one, and each open one `ready` accepts."""
        out: list[tuple[tuple[str, ...], list[list[Any]], int]] = []
        for nodes in list(self._frames):
            queued = self._frames[nodes]
            last = queued[-1]
            leaving = queued if ready(nodes, last.rows, last.opened_at) else queued[:-1]
            out += [(nodes, list(frame.groups.values()), frame.rows) for frame in leaving]
            if len(leaving) == len(queued):
                del self._frames[nodes]
            elif leaving:
                self._frames[nodes] = [last]
        return out

    def oldest(self) -> float | None:
        """When the oldest write still queued was queued (None: nothing is)."""
        return min((queued[0].opened_at for queued in self._frames.values()), default=None)


class Mesh(Protocol):
    def async_send_many(self, node_ids: tuple[str, ...], op: str, **fields: Any) -> int: ...


class WriteSender:
    """Replica writes on their way out: queued per set of destination nodes, sent as sput frames.

    An open frame leaves once a majority of its nodes have answered every replica write
    sent to them: a node that is still working on earlier writes would only stage these
    for its next group commit, so waiting for it costs little and merges the writes of
    several loop turns into one frame (fewer frames, wake-ups and fsyncs at moderate load).
    An idle path never waits; a frame of `send_at_rows` writes, or one whose first write
    waited `hold_max_s`, leaves anyway. A node that answered nothing for `quiet_s` counts
    as idle again (its answers were lost to a restart or a dropped frame). Writes a node did
    not get (no link, or its queue was full) are counted in `counters["sput_not_sent"]`.
    Engine thread only.
    """

    __slots__ = ("_batcher", "_unanswered", "_heard_at", "_send_at_rows", "_hold_max_s", "_quiet_s", "_counters")

    def __init__(self, counters: dict[str, int], *, send_at_rows: int = 256, hold_max_s: float = 0.004,
                 quiet_s: float = 0.25) -> None:
        self._batcher = WriteBatcher()
        self._unanswered: dict[str, int] = {}  # node -> replica writes sent to it and not answered yet
        self._heard_at: dict[str, float] = {}  # node -> when it last answered replica writes
        self._send_at_rows = send_at_rows
        self._hold_max_s = hold_max_s
        self._quiet_s = quiet_s
        self._counters = counters

    def __bool__(self) -> bool:
        return bool(self._batcher)

    def add(self, nodes: tuple[str, ...], table: str, hint_for: tuple[str, ...], flags: int, req: int, key: bytes,
            raw: bytes, now: float) -> None:
        """Queue one write (`raw`: the encoded Versioned) for every node of `nodes`."""
        self._batcher.add(nodes, table, hint_for, flags, req, key, raw, now)

    def answered(self, node: str, count: int, now: float) -> None:
        """`node` answered `count` replica writes (in one sack)."""
        self._unanswered[node] = max(0, self._unanswered.get(node, 0) - count)
        self._heard_at[node] = now

    def send(self, mesh: Mesh, now: float, *, hold: bool = True) -> None:
        """Send every frame that may leave now (every frame, with hold=False)."""
        frames = self._batcher.take(lambda nodes, rows, opened_at: self._may_leave(nodes, rows, opened_at, now)) \
            if hold else self._batcher.drain()
        unanswered = self._unanswered
        for nodes, groups, rows in frames:
            missed = mesh.async_send_many(nodes, "sput", w=groups)
            if missed:
                self._counters["sput_not_sent"] = self._counters.get("sput_not_sent", 0) + missed * rows
            for node in nodes:
                unanswered[node] = unanswered.get(node, 0) + rows

    def wait_s(self, now: float) -> float | None:
        """How soon a held frame must leave (None: none is held)."""
        oldest = self._batcher.oldest()
        return None if oldest is None else max(0.0, oldest + self._hold_max_s - now)

    def _may_leave(self, nodes: tuple[str, ...], rows: int, opened_at: float, now: float) -> bool:
        if rows >= self._send_at_rows or now - opened_at >= self._hold_max_s:
            return True
        unanswered, heard_at = self._unanswered, self._heard_at
        idle = 0
        for node in nodes:
            if unanswered.get(node, 0) == 0:
                idle += 1
            elif now - heard_at.get(node, 0.0) > self._quiet_s:
                unanswered[node] = 0
                idle += 1
        return idle >= len(nodes) // 2 + 1


class AckBatcher:
    """Answers to replica writes, as sack frames per node."""

    __slots__ = ("_ok", "_other")

    def __init__(self) -> None:
        self._ok: dict[str, list[int]] = {}
        self._other: dict[str, list[list[Any]]] = {}

    def __bool__(self) -> bool:
        return bool(self._ok or self._other)

    def ok(self, node: str, reqs: list[int]) -> None:
        found = self._ok.get(node)
        if found is None:
            self._ok[node] = list(reqs)
        else:
            found.extend(reqs)

    def other(self, node: str, req: int, code: str) -> None:
        self._other.setdefault(node, []).append([req, code])

    def drain(self) -> list[tuple[str, dict[str, list[Any]]]]:
        """(node, sack fields) of every frame to send; the batcher is empty afterwards."""
        ok, other = self._ok, self._other
        self._ok, self._other = {}, {}
        out: list[tuple[str, dict[str, list[Any]]]] = []
        for node in ok.keys() | other.keys():
            reqs, failures = ok.get(node, []), other.get(node, [])
            for start in range(0, max(len(reqs), 1), _ACKS_PER_FRAME):
                fields: dict[str, list[Any]] = {}
                if reqs:
                    fields["k"] = reqs[start : start + _ACKS_PER_FRAME]
                if start == 0 and failures:
                    fields["a"] = failures[:_FAILURES_PER_FRAME]
                out.append((node, fields))
            for start in range(_FAILURES_PER_FRAME, len(failures), _FAILURES_PER_FRAME):
                out.append((node, {"a": failures[start : start + _FAILURES_PER_FRAME]}))
        return out


def parse_write_groups(msg: dict[str, Any]) -> list[WriteGroup]:
    """The groups of a sput frame with their rows decoded; ValueError if the frame is malformed."""
    groups = msg.get("w")
    if not isinstance(groups, list):
        raise ValueError("sput frame without a list 'w'")
    out: list[WriteGroup] = []
    for group in groups:
        if not isinstance(group, list) or len(group) != 5:
            raise ValueError("sput group is not [table, hint_for, flags, reqs, rows]")
        table, hint_for, flags, reqs, flat = group
        if not (isinstance(table, str) and isinstance(hint_for, list) and isinstance(flags, int)
                and isinstance(reqs, list) and isinstance(flat, list) and len(flat) == 2 * len(reqs)):
            raise ValueError("sput group has fields of the wrong types or lengths")
        # Exact types, checked a type per row in C (set(map(type, ...))): this runs for every replica write.
        if not set(map(type, hint_for)) <= _TEXT or not all(0 < len(node.encode()) <= 255 for node in hint_for):
            raise ValueError("sput group has a hint target that is not a node id (text of 1 to 255 bytes)")
        if not set(map(type, reqs)) <= _INTEGER:
            raise ValueError("sput group has a request id that is not an integer")
        if not set(map(type, flat)) <= _BYTES:
            raise ValueError("sput group has a key or value that is not a byte string")
        keys, raws = flat[0::2], flat[1::2]
        try:
            items = decode_many(raws)
        except VersionError as exc:
            raise ValueError(f"sput group has a bad versioned value: {exc}") from None
        out.append((table, tuple(hint_for), flags, reqs, keys, items, raws))
    return out
