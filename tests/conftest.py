"""Fixtures shared by every test: a test that leaks a thread fails."""

from __future__ import annotations

import threading
from typing import Iterator

import pytest

from support.waiting import wait_until


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield

    def leaked() -> list[str]:
        return [t.name for t in threading.enumerate() if t not in before and t.is_alive()]

    try:
        wait_until(lambda: not leaked(), 5.0, "threads started by the test to finish")
    except AssertionError:
        pytest.fail(f"test leaked threads: {leaked()}")
