"""LiveDesk: live delivery on the recipient's edge. An offered message goes to every session of the recipient here
that can take it now, or is declined, and then the origin stores it in the recipient's inbox.

An offer (`mdeliver`, or the origin edge's own call when the recipient is on it too)
is declined when:
- the recipient has no session here;
- a session of the recipient may still be owed stored messages (it has not synced,
  or its inbox changed): the message goes to the inbox behind them, which keeps
  per-sender order across the switch between online and offline;
- the offer names the pair's last stored message (`after`) and some session has
  neither it unacked nor acked lately: this edge missed that message's `minbox`.
  The inbox is pushed, and this one is stored behind it;
- every session holds too many unacked messages, or one unacked for longer than
  `deliver_timeout_s` (its app is slow to receive), so its senders do not wait a
  deliver timeout per message.

The declines go back to the origin (`mdeclined`); the acks are the EdgeService's.
Engine thread only.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from iris_mesh.messaging._protocol import MESSAGE_ID_BYTES, Delivery, Limits, build_deliver, is_valid_user
from iris_mesh.messaging._sessions import Outstanding, SessionTable

__all__ = ["LiveDesk"]


class LiveDesk:
    """See the module docstring.

    `send(edge, op, **fields)` sends a mesh frame to another edge; `declined_here(msg_id, to)` is called
    for an offer this edge made to itself; `inbox_changed(user)` pushes the user's inbox to its sessions.
    """

    def __init__(self, *, node_id: str, sessions: SessionTable, limits: Limits, deliver_timeout_s: float,
                 counters: collections.Counter[str], now: Callable[[], float],
                 to_client: Callable[[bytes, dict[str, Any]], None], send: Callable[..., bool],
                 declined_here: Callable[[bytes, str], None], inbox_changed: Callable[[str], None]) -> None:
        self._node_id = node_id
        self._sessions = sessions
        self._limits = limits
        self._deliver_timeout_s = deliver_timeout_s
        self._counters = counters
        self._now = now
        self._to_client = to_client
        self._send = send
        self._declined_here = declined_here
        self._inbox_changed = inbox_changed

    def async_on_mdeliver(self, msg: dict[str, Any]) -> None:
        """An offer from another edge: {id, from, to, ts, body, after?}; a malformed one is counted and dropped."""
        try:
            msg_id, sender, to, ts, body = msg["id"], msg["from"], msg["to"], msg["ts"], msg["body"]
            after = msg.get("after")
            if not (isinstance(msg_id, bytes) and len(msg_id) == MESSAGE_ID_BYTES
                    and is_valid_user(sender) and is_valid_user(to) and isinstance(ts, int)
                    and isinstance(body, bytes) and (after is None or isinstance(after, bytes))):
                raise TypeError
        except (KeyError, TypeError):
            self._counters["bad_mesh_frames"] += 1
            return
        self.async_offer(msg["src"], msg_id, sender, to, ts, body, after)

    def async_offer(self, origin: str, msg_id: bytes, sender: str, to: str, ts: int, body: bytes,
                    after: bytes | None) -> None:
        """Deliver the message to the sessions of `to` here that can take it, or decline it to `origin`."""
        sessions = self._sessions.of_user(to)
        if not sessions:
            self._decline(origin, msg_id, to, "no session")
            return
        if any(not s.inbox_clean for s in sessions):
            self._decline(origin, msg_id, to, "inbox not yet synced")
            return
        if after is not None and not all(s.has_seen(after) for s in sessions):
            self._counters["live_declined_behind_stored"] += 1
            self._decline(origin, msg_id, to, "behind a stored message")
            self._inbox_changed(to)
            return
        now = self._now()
        taken = 0
        slow_before = now - self._deliver_timeout_s
        for session in sessions:
            handed = session.outstanding.get(msg_id)
            if handed is not None:
                # It has this one already (its sender's resend through another edge, or from the inbox): not handed
                # again; its ack goes to this origin too, or the origin would store it at its deliver timeout.
                if origin not in handed.origins:
                    handed.origins += (origin,)
                taken += 1
                continue
            if len(session.outstanding) >= self._limits.max_pending_deliveries:
                continue
            oldest = next(iter(session.outstanding.values()), None)
            if oldest is not None and oldest.at < slow_before:
                # It would wait as long as the one left unacked: it reaches the session from the inbox instead.
                self._counters["live_declined_slow_session"] += 1
                continue
            session.outstanding[msg_id] = Outstanding((origin,), False, sender, now)
            self._to_client(session.route, build_deliver(Delivery(msg_id, sender, ts, body, session.next_seq())))
            taken += 1
        if not taken:
            self._decline(origin, msg_id, to, "sessions have too many (or too old) unacked messages")

    def _decline(self, origin: str, msg_id: bytes, to: str, reason: str) -> None:
        self._counters["live_declined"] += 1
        if origin == self._node_id:
            self._declined_here(msg_id, to)
        else:
            self._send(origin, "mdeclined", id=msg_id, to=to, reason=reason)
