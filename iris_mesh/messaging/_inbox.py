"""How messages and presence rows are laid out in the store.

offline_msg   key  user \\x00 message_id (16 bytes, time-ordered)   value  CBOR {f: sender, t: ts_ms, b: body}
presence      key  user \\x00 edge node id                          value  CBOR {on: bool, t: ts_ms, i: incarnation}

The user is the partition key (see `store._keys`), so a user's inbox and
presence rows each live on one replica set and are read with one prefix scan,
in message-id order: per sender, send order. `Store` is what the edge needs
of the store service to read and write them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import cbor2

from iris_mesh.store import Version, compose

__all__ = ["Store", "stored_version", "inbox_key", "inbox_prefix", "message_id_of", "encode_stored", "decode_stored", "StoredMessage",
           "presence_key", "presence_prefix", "encode_presence", "decode_presence", "PresenceRow"]


class Store(Protocol):
    """Quorum writes and prefix scans of `iris_mesh.store.StoreService`; each answers `on_done` exactly once."""

    def async_put(self, table: str, key: bytes, value: bytes | None, *, durability: str, on_done: Callable[[Any], None],
                  now: float, min_hlc: int = 0, version: Any = None) -> None: ...
    def async_scan(self, table: str, prefix: bytes, *, start_after: bytes | None, limit: int, on_done: Callable[[Any], None], now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class StoredMessage:
    sender: str
    ts_ms: int
    body: bytes


def inbox_prefix(user: str) -> bytes:
    return user.encode() + b"\x00"


def inbox_key(user: str, message_id: bytes) -> bytes:
    return compose(user.encode(), message_id)


def stored_version(message_id: bytes) -> Version:
    """The version every copy of a stored message gets, made from its id alone.

    A resend of the same id writes the same version, which is not newer than
    the stored copy, nor than the tombstone its ack left: it never makes a
    second copy, and never brings an acked message back (until the tombstone
    is purged, `tombstone_grace_s` later).
    """
    return Version(int.from_bytes(message_id[:6], "big") << 16, "")


def message_id_of(key: bytes) -> bytes:
    return key[key.index(b"\x00") + 1 :]


def encode_stored(message: StoredMessage) -> bytes:
    return cbor2.dumps({"f": message.sender, "t": message.ts_ms, "b": message.body})


def decode_stored(raw: bytes) -> StoredMessage:
    """ValueError for a value that is not a stored message."""
    try:
        data = cbor2.loads(raw)
        return StoredMessage(str(data["f"]), int(data["t"]), bytes(data["b"]))
    except Exception as exc:  # a corrupt row must not take the edge down
        raise ValueError(f"not a stored message: {exc}") from None


def presence_prefix(user: str) -> bytes:
    return user.encode() + b"\x00"


def presence_key(user: str, edge: str) -> bytes:
    return compose(user.encode(), edge.encode())


class PresenceRow(NamedTuple):
    on: bool
    ts_ms: int
    run: int | None  # the incarnation of the edge that wrote it (None: a row of a release that did not say)


def encode_presence(online: bool, ts_ms: int, run: int) -> bytes:
    return cbor2.dumps({"on": online, "t": ts_ms, "i": run})


def decode_presence(raw: bytes) -> PresenceRow:
    """ValueError for a value that is not a presence row."""
    try:
        data = cbor2.loads(raw)
        run = data.get("i")
        return PresenceRow(bool(data["on"]), int(data["t"]), None if run is None else int(run))
    except Exception as exc:
        raise ValueError(f"not a presence row: {exc}") from None
