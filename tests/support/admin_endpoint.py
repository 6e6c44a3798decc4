"""A real engine's admin endpoint whose answers the test gives, for tests of meshctl's side of the admin protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from iris_mesh.sockets import ClusterKeys, Engine

__all__ = ["Answering", "admin_endpoint"]


class Answering:
    """An engine handler that hands every admin request to `answer` (which may reply, or not) and does nothing else."""

    def __init__(self, answer: Callable[[Any], None]) -> None:
        self._answer = answer

    def async_on_start(self, engine: Any, now: float) -> None:
        pass

    def async_tick(self, now: float) -> float:
        return 1.0

    def async_after_batch(self, now: float) -> None:
        return None

    def async_on_admin(self, request: Any, now: float) -> None:
        self._answer(request)

    def async_on_stop(self, now: float) -> None:
        pass


@contextmanager
def admin_endpoint(keys: ClusterKeys, answer: Callable[[Any], None], node_id: str = "node") -> Iterator[str]:
    """`tcp://127.0.0.1:PORT` of a running engine whose admin requests go to `answer`; stopped on leaving."""
    engine = Engine(node_id=node_id, incarnation=1, keys=keys, handler=Answering(answer),  # type: ignore[arg-type]
                    bind_address="127.0.0.1")
    ports = engine.start()
    try:
        yield f"tcp://127.0.0.1:{ports.admin}"
    finally:
        engine.stop()
