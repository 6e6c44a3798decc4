"""The engine's wake-up: a file descriptor its poller loop watches and any thread can make readable.

`Engine.post` wakes the loop through it when it queues a callable; the loop clears it
before it runs the mailbox.
"""

from __future__ import annotations

import os
import sys

__all__ = ["Waker"]


class Waker:
    """A file descriptor the loop polls and any thread can make readable: an eventfd (a pipe where there is none).

    Cheaper per wake-up than an inproc socket pair, which signals through a descriptor of its own anyway.
    """

    __slots__ = ("fd", "_write_fd", "_token")

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self.fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._token = (1).to_bytes(8, sys.byteorder)
        else:
            self.fd, self._write_fd = os.pipe()
            os.set_blocking(self.fd, False)
            os.set_blocking(self._write_fd, False)
            self._token = b"\x01"

    def wake(self) -> None:
        try:
            os.write(self._write_fd, self._token)
        except BlockingIOError:
            pass  # already readable

    def clear(self) -> None:
        try:
            os.read(self.fd, 4096)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)
        if self._write_fd != self.fd:
            os.close(self._write_fd)
