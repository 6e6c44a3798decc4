"""MinboxCourier: tells the other edges that a user's inbox changed (`minbox`), also those that missed it.

`minbox {to, id, from}` goes to every edge alive now, so the sessions of `to` there get
the stored message `id` (from user `from`) pushed. An edge seen alive before (at a tick, or offered a live
delivery) that is not alive now misses it: it may have been paused or cut off,
and would think its sessions of `to` clean. The courier keeps what each such edge
missed (per user, newest last, at most `_OWED_MINBOX_MAX` users per edge) and
sends it once the edge is alive again, before anything else goes to that edge
(`pay`), so the stored message reaches the user without waiting for a next one.

Engine thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["MinboxCourier"]

_OWED_MINBOX_MAX = 10_000  # users per edge whose missed minbox is kept for it


class MinboxCourier:
    """See the module docstring. `send(edge, op, **fields)` returns whether the frame could be queued."""

    def __init__(self, *, node_id: str, live_edges: Callable[[], list[str]], is_alive: Callable[[str], bool],
                 send: Callable[..., bool]) -> None:
        self._node_id = node_id
        self._live_edges = live_edges
        self._is_alive = is_alive
        self._send = send
        self.seen: set[str] = set()  # every edge seen alive: those not alive now miss a minbox
        self._owed: dict[str, dict[str, None]] = {}  # edge -> users whose minbox it missed (an ordered set)

    def saw(self, edges: Iterable[str]) -> None:
        """These edges are alive now (a live delivery is offered to them, say)."""
        self.seen.update(edges)

    def announce(self, user: str, msg_id: bytes, sender: str) -> None:
        """`msg_id` from `sender` was stored in `user`'s inbox: tell every other live edge, and owe it to the edges
        seen before and not alive (an owed minbox names no message: by then it is about the whole inbox)."""
        live = self._live_edges()
        for edge in live:
            if edge != self._node_id:
                self._send(edge, "minbox", to=user, id=msg_id, **{"from": sender})
        for edge in self.seen.difference(live, (self._node_id,)):
            owed = self._owed.setdefault(edge, {})
            owed.pop(user, None)
            owed[user] = None
            if len(owed) > _OWED_MINBOX_MAX:
                del owed[next(iter(owed))]

    def pay(self, edge: str) -> None:
        """Send `edge` the minboxes it missed while it was not alive here; those it cannot take yet stay owed."""
        owed = self._owed.get(edge)
        while owed:
            user = next(iter(owed))
            if not self._send(edge, "minbox", to=user):
                return
            del owed[user]
        self._owed.pop(edge, None)

    def tick(self) -> None:
        """Note the edges alive now, and pay those that are alive again what they missed."""
        self.seen.update(self._live_edges())
        for edge in [e for e in self._owed if self._is_alive(e)]:
            self.pay(edge)
