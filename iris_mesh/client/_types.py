"""What the SDK hands the application: received messages, send results, presence answers."""

from __future__ import annotations

from dataclasses import dataclass

from iris_mesh.messaging._protocol import SendStatus

__all__ = ["LOGIN_LOST", "LoginLost", "Message", "Presence", "SendResult"]


@dataclass(frozen=True, slots=True)
class Message:
    """A received message; `ts` is the Unix time in milliseconds at which the sender's edge accepted it."""

    id: bytes
    sender: str
    body: bytes
    ts: int

    @property
    def id_hex(self) -> str:
        """The id as 32 lowercase hex digits, as logs and meshctl show it."""
        return self.id.hex()


@dataclass(frozen=True, slots=True)
class SendResult:
    """A send the cluster made safe: `status` is delivered, stored or queued (docs/PROTOCOL.md section 9.4)."""

    id: bytes
    status: SendStatus

    @property
    def id_hex(self) -> str:
        return self.id.hex()


@dataclass(frozen=True, slots=True)
class Presence:
    """Whether `user` has a logged-in session; `last_seen_ms` (Unix ms) is None for a user never seen."""

    user: str
    online: bool
    last_seen_ms: int | None


class LoginLost:
    """In a client's receive queue: logging in again after a failover failed (`Client.login_lost` says why)."""

    __slots__ = ()


LOGIN_LOST = LoginLost()
