"""SeenMessages: which messages the SDK already surfaced, so a redelivery is dropped (docs/PROTOCOL.md 9.2).

Sans-IO. A message is first *queued* (handed to the receive queue) and then
*returned* (receive() gave it to the application; only now may it be acked).
A redelivery of a queued message is dropped without an ack: the copy in the
queue will be acked when it is returned, and acking earlier would lose the
message if the application died first. A redelivery of a returned message is
dropped and acked again, since the first ack evidently did not reach the
server. Queued messages are bounded by the edge's flow control and the inbox
size; returned ids are kept for `keep_s` (an hour), or the last `window` of
them if those are more (oldest forgotten first): a burst of messages does not
push out of memory those a failover of a moment ago may bring again.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

__all__ = ["Seen", "SeenMessages"]

# (sender, id): ids are made by senders, so two senders' messages to this user may carry equal ids and
# both arrive (when the first went live). The server keeps one stored copy per (recipient, id)
# (docs/PROTOCOL.md sections 9.2 and 10).
MessageKey = tuple[str, bytes]


class Seen(enum.Enum):
    NEW = "new"
    QUEUED = "queued"  # a redelivery of a message still waiting in the receive queue: drop
    RETURNED = "returned"  # a redelivery of a message the application has: drop and ack again


KEEP_S = 3600.0


class SeenMessages:
    """Remembers queued messages, and the returned ones of the last `keep_s` or the last `window` of them, whichever
    are more; not thread-safe (I/O thread only)."""

    __slots__ = ("_window", "_keep_s", "_queued", "_returned")

    def __init__(self, window: int, keep_s: float = KEEP_S) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._window = window
        self._keep_s = keep_s
        self._queued: set[MessageKey] = set()
        self._returned: OrderedDict[MessageKey, float] = OrderedDict()  # -> when it was returned

    def classify(self, key: MessageKey) -> Seen:
        """Whether a message just received is new, waiting in the receive queue, or already returned."""
        if key in self._queued:
            return Seen.QUEUED
        if key in self._returned:
            return Seen.RETURNED
        return Seen.NEW

    def queued(self, key: MessageKey) -> None:
        """The message was put in the receive queue."""
        self._queued.add(key)

    def returned(self, key: MessageKey, now: float) -> None:
        """receive() handed the message to the application (at `now`, monotonic seconds); forgets the oldest
        returned ids past `window` that are older than `keep_s`."""
        self._queued.discard(key)
        returned = self._returned
        returned[key] = now
        returned.move_to_end(key)
        while len(returned) > self._window and next(iter(returned.values())) <= now - self._keep_s:
            returned.popitem(last=False)

    @property
    def waiting(self) -> int:
        """How many messages sit in the receive queue, not yet returned."""
        return len(self._queued)

    def __len__(self) -> int:
        return len(self._queued) + len(self._returned)
