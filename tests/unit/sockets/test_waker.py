"""Tests for iris_mesh.sockets._waker: any thread makes the descriptor readable, the loop clears it."""

from __future__ import annotations

import select
import threading

from iris_mesh.sockets._waker import Waker


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_a_wake_makes_the_descriptor_readable_until_it_is_cleared() -> None:
    waker = Waker()
    try:
        assert not _readable(waker.fd)
        waker.wake()
        waker.wake()  # a second wake before the clear neither blocks nor needs a second clear
        assert _readable(waker.fd)
        waker.clear()
        assert not _readable(waker.fd)
        waker.clear()  # clearing an idle waker does not block
    finally:
        waker.close()


def test_another_thread_can_wake_it() -> None:
    waker = Waker()
    try:
        thread = threading.Thread(target=waker.wake)
        thread.start()
        thread.join()
        assert select.select([waker.fd], [], [], 1.0)[0]
    finally:
        waker.close()
