"""A stand-in for a socket the engine drains: whole messages wait in it, and receives take their parts one by one."""

from __future__ import annotations

import collections
from typing import Any

import zmq


class QueuedMessages:
    """Readable while messages wait; RCVMORE says whether more parts of the message being read follow. `copies`
    counts the parts received as bytes (copy=True); the others come as memoryviews."""

    def __init__(self, messages: list[list[bytes]]) -> None:
        self.messages = collections.deque(messages)
        self.partial: collections.deque[bytes] = collections.deque()
        self.copies = 0

    def getsockopt(self, option: int) -> int:
        if option == zmq.RCVMORE:
            return int(bool(self.partial))
        assert option == zmq.EVENTS
        return zmq.POLLIN if self.messages or self.partial else 0

    def recv(self, flags: int = 0, copy: bool = True) -> Any:
        if not self.partial:
            if not self.messages:
                raise zmq.Again()
            self.partial.extend(self.messages.popleft())
        part = self.partial.popleft()
        self.copies += copy
        return part if copy else memoryview(part)
