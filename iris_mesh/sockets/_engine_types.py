"""What the engine gives and expects: its bound ports, its error, and the contract of the node logic it drives.

`EngineHandler` is that node logic; `AdminRequest` is how a meshctl request reaches it
and is answered. Every method of both runs on the engine thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from iris_mesh.sockets._codec import envelope

if TYPE_CHECKING:
    from iris_mesh.sockets._engine import Engine

__all__ = ["AdminRequest", "BoundPorts", "EngineError", "EngineHandler"]


class EngineError(RuntimeError):
    """The engine could not start, or a call into it failed or timed out."""


@dataclass(frozen=True, slots=True)
class BoundPorts:
    mesh: int
    heartbeat: int
    admin: int
    client: int = 0  # 0: this node has no client gateway


class AdminRequest:
    """One meshctl request; `reply` may be called later (e.g. after a mesh ping), once."""

    __slots__ = ("msg", "_engine", "_route", "_answered")

    def __init__(self, msg: dict[str, Any], engine: Engine, route: bytes) -> None:
        self.msg = msg
        self._engine = engine
        self._route = route
        self._answered = False

    def reply(self, body: dict[str, Any]) -> None:
        """Send the answer (engine thread only). `body` gets `v`, `op`="reply" and the request's `rid`."""
        if self._answered:
            return
        self._answered = True
        frame = envelope("reply", rid=self.msg.get("rid"), **body)
        self._engine.async_send_admin(self._route, frame)

    def error(self, code: str, detail: str) -> None:
        self.reply({"ok": False, "error": code, "detail": detail})


class EngineHandler(Protocol):
    """The node logic driven by the engine; every method runs on the engine thread."""

    def async_on_start(self, engine: Engine, now: float) -> None: ...
    def async_on_hello(self, msg: dict[str, Any], now: float) -> None: ...
    def async_on_mesh(self, msg: dict[str, Any], now: float) -> None: ...
    def async_on_heartbeat(self, msg: dict[str, Any], now: float) -> None: ...
    def async_on_admin(self, request: AdminRequest, now: float) -> None: ...
    def async_on_client(self, route: bytes, msg: dict[str, Any], now: float) -> None: ...
    def async_after_batch(self, now: float) -> float | None:
        """End of a loop turn; returns how soon it needs a tick (None: no sooner than its last tick said)."""
    def async_tick(self, now: float) -> float: ...
    def async_on_stop(self, now: float) -> None: ...
