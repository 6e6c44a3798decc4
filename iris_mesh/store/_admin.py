"""Admin operations of the store (`meshctl put/get/delete/tables/backup`). Engine thread only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from iris_mesh.store._coordinator import DURABILITIES, Done
from iris_mesh.store._service import USER_TABLES, StoreService
from iris_mesh.store._versioned import Versioned

__all__ = ["StoreAdmin"]


class Request:
    """What the admin endpoint hands over: the request map and a one-shot reply."""

    msg: dict[str, Any]

    def reply(self, body: dict[str, Any]) -> None: ...
    def error(self, code: str, detail: str) -> None: ...


def _describe(item: Versioned | None) -> dict[str, Any]:
    if item is None or item.is_tombstone:
        return {"found": False, "value": None, "version": None if item is None else _version(item)}
    return {"found": True, "value": item.value, "version": _version(item)}


def _version(item: Versioned) -> dict[str, Any]:
    return {"hlc": item.version.hlc, "node": item.version.node, "wall_ms": item.version.wall_ms}


def _key(msg: dict[str, Any]) -> bytes | None:
    key = msg.get("key")
    if isinstance(key, str) and key:
        return key.encode()
    if isinstance(key, bytes) and key:
        return key
    return None


class StoreAdmin:
    """Handlers keyed by admin op, for the node runtime's table."""

    def __init__(self, store: StoreService, *, checkpoint: Callable[[Path], Path] | None) -> None:
        self._store = store
        self._checkpoint = checkpoint

    def ops(self) -> dict[str, Callable[[Any, float], None]]:
        return {
            "put": self._put,
            "get": self._get,
            "delete": self._delete,
            "tables": self._tables,
            "backup": self._backup,
        }

    def _common(self, request: Request) -> tuple[str, bytes] | None:
        table, key = request.msg.get("table"), _key(request.msg)
        if table not in USER_TABLES:
            request.error("bad_request", f"unknown table {table!r}; tables: {', '.join(USER_TABLES)}")
            return None
        if key is None:
            request.error("bad_request", "a non-empty key is required")
            return None
        return table, key

    def _durability(self, request: Request) -> str | None:
        durability = request.msg.get("durability", "quorum")
        if durability not in DURABILITIES:
            request.error("bad_request", f"durability must be one of {', '.join(DURABILITIES)}, got {durability!r}")
            return None
        return durability

    def _answer_write(self, request: Request) -> Callable[[Done], None]:
        def done(result: Done) -> None:
            request.reply({"ok": result.ok, "code": result.code, "detail": result.detail,
                           "acked_by": list(result.acked_by), "error": None if result.ok else result.code})
        return done

    def _put(self, request: Request, now: float) -> None:
        target = self._common(request)
        durability = self._durability(request)
        if target is None or durability is None:
            return
        value = request.msg.get("value")
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, bytes):
            request.error("bad_request", "a value (text or bytes) is required")
            return
        self._store.async_put(*target, value, durability=durability, on_done=self._answer_write(request), now=now)

    def _delete(self, request: Request, now: float) -> None:
        target = self._common(request)
        durability = self._durability(request)
        if target is None or durability is None:
            return
        self._store.async_put(*target, None, durability=durability, on_done=self._answer_write(request), now=now)

    def _get(self, request: Request, now: float) -> None:
        target = self._common(request)
        if target is None:
            return
        table, key = target
        replica = request.msg.get("replica")
        if isinstance(replica, str) and replica:
            def one(item: Versioned | None, code: str) -> None:
                if code != "ok":
                    request.error(code, f"{replica} could not read {table}/{key!r}: {code}")
                else:
                    request.reply({"ok": True, "replica": replica, **_describe(item)})
            self._store.async_read_replica(replica, table, key, one)
            return

        def done(result: Done) -> None:
            if not result.ok:
                request.reply({"ok": False, "error": result.code, "detail": result.detail})
            else:
                request.reply({"ok": True, "replicas": self._store.replicas(key), **_describe(result.item)})
        self._store.async_get(table, key, on_done=done, now=now)

    def _tables(self, request: Request, now: float) -> None:
        local = self._store.local
        if local is None:
            request.reply({"ok": True, "node": self._store.node_id, "role": "edge", "tables": {}})
            return
        counts = {table: local.count(table) for table in (*USER_TABLES, "hints")}
        request.reply({"ok": True, "node": self._store.node_id, "role": "core", "tables": counts, "stats": local.stats()})

    def _backup(self, request: Request, now: float) -> None:
        directory = request.msg.get("dir")
        if not isinstance(directory, str) or not directory:
            request.error("bad_request", "backup needs a directory")
            return
        if self._checkpoint is None:
            request.reply({"ok": True, "node": self._store.node_id, "skipped": "edges hold no data"})
            return
        try:
            path = self._checkpoint(Path(directory) / self._store.node_id)
        except Exception as exc:  # the operator needs the reason, the node keeps serving
            request.error("backup_failed", f"{type(exc).__name__}: {exc}")
            return
        request.reply({"ok": True, "node": self._store.node_id, "path": str(path)})
