"""Admin operations of the store (`meshctl put/get/delete/tables/latency/backup/resync`). Engine thread only.

Also two operator and test tools with no meshctl command: `put_batch` writes many keys
in one request (bulk loads), `drop_hints` forgets the hints a node keeps for one replica
(to prove that anti-entropy alone repairs it, or to drop hints for a core that is gone).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from iris_mesh.store._coordinator import DURABILITIES, Done
from iris_mesh.store._checkpoint import BackupError, Checkpointed
from iris_mesh.store._db import StoreError
from iris_mesh.store._anti_entropy import SessionResult
from iris_mesh.store._service import USER_TABLES, StoreService
from iris_mesh.store._versioned import Versioned

__all__ = ["StoreAdmin"]

PUT_BATCH_MAX = 5000
_RESYNC_DEFAULT_TIMEOUT_S = 30.0
_RESYNC_MAX_TIMEOUT_S = 600.0


class Request:
    """What the admin endpoint hands over: the request map and a one-shot reply."""

    msg: dict[str, Any]

    def reply(self, body: dict[str, Any]) -> None: ...
    def error(self, code: str, detail: str) -> None: ...


def _replica_read_failed(replica: str, table: str, code: str, timeout_s: float) -> str:
    """Why `get --replica` has no answer, for the operator."""
    why = {
        "unknown_node": f"{replica} is not a known node of this cluster",
        "unavailable": f"{replica} is not alive now (meshctl status): its copy cannot be read until it is back",
        "timeout": f"{replica} did not answer within {timeout_s:g} s",
        "bad_request": f"{replica} holds no {table} table (only cores hold data)",
    }
    return why.get(code, f"{replica} could not read its copy ({code})")


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

    def __init__(self, store: StoreService, *,
                 checkpoint: Callable[[Path, Callable[[int, int], None], threading.Event], Checkpointed] | None,
                 post: Callable[[Callable[[float], None]], None] | None = None) -> None:
        self._store = store
        self._checkpoint = checkpoint
        self._post = post
        # The checkpoint being copied onto another disk now (set by the backup thread, read for the status).
        self._copying: dict[str, Any] | None = None
        self._stopping = threading.Event()  # set once by stop_backups: backups going on give up, new ones are refused
        self._backups: list[threading.Thread] = []  # started, maybe ended
        self._backups_lock = threading.Lock()  # a backup starts before stop_backups, or is refused

    def stop_backups(self, timeout_s: float) -> bool:
        """Have the backups going on give up (each answers that the node is stopping) and wait up to `timeout_s` for
        them; False if one still runs (it may be inside RocksDB: the database must not be closed under it)."""
        with self._backups_lock:
            self._stopping.set()
            backups = list(self._backups)
        deadline = time.monotonic() + timeout_s
        for thread in backups:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in backups)

    def copying(self) -> dict[str, Any] | None:
        """A backup copying its checkpoint onto another disk now: where to, and its bytes copied of all (None: none)."""
        return self._copying

    def ops(self) -> dict[str, Callable[[Any, float], None]]:
        return {
            "put": self._put,
            "get": self._get,
            "delete": self._delete,
            "tables": self._tables,
            "latency": self._latency,
            "backup": self._backup,
            "put_batch": self._put_batch,
            "resync": self._resync,
            "drop_hints": self._drop_hints,
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
        self._write_over(request, *target, value, durability, now)

    def _delete(self, request: Request, now: float) -> None:
        target = self._common(request)
        durability = self._durability(request)
        if target is None or durability is None:
            return
        self._write_over(request, *target, None, durability, now)

    def _write_over(self, request: Request, table: str, key: bytes, value: bytes | None, durability: str,
                    now: float) -> None:
        """An operator's put or delete wins over what is stored: read first, then write above its version. A
        stored message's version comes from its id, up to a day ahead of the clock: a write at the clock's
        version would lose to it, and be answered ok all the same."""
        def read(result: Done) -> None:
            # Not readable (too few replicas): written all the same, and the write's own answer says why it failed.
            above = 0 if not result.ok or result.item is None else result.item.version.hlc
            self._store.async_put(table, key, value, durability=durability, on_done=self._answer_write(request),
                                  now=self._store.turn_time, min_hlc=above)
        self._store.async_get(table, key, on_done=read, now=now)

    def _get(self, request: Request, now: float) -> None:
        target = self._common(request)
        if target is None:
            return
        table, key = target
        replica = request.msg.get("replica")
        if isinstance(replica, str) and replica:
            def one(item: Versioned | None, code: str) -> None:
                if code != "ok":
                    request.error(code, _replica_read_failed(replica, table, code, self._store.coordinator.timeout_s))
                else:
                    request.reply({"ok": True, "replica": replica, **_describe(item)})
            self._store.async_read_replica(replica, table, key, one, now)
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
        anti_entropy = self._store.anti_entropy.status() if self._store.anti_entropy is not None else None
        request.reply({"ok": True, "node": self._store.node_id, "role": "core", "tables": counts, "stats": local.stats(),
                       "anti_entropy": anti_entropy})

    def _latency(self, request: Request, now: float) -> None:
        local = self._store.local
        reply = {"ok": True, "node": self._store.node_id, "role": "edge" if local is None else "core",
                 "latency": self._store.latency_view(now)}
        if local is not None:
            reply["rocksdb"] = local.engine_state()  # what the storage engine is doing behind those numbers
        request.reply(reply)

    def _backup(self, request: Request, now: float) -> None:
        directory = request.msg.get("dir")
        if not isinstance(directory, str) or not directory:
            request.error("bad_request", "backup needs a directory")
            return
        if self._checkpoint is None:
            request.reply({"ok": True, "node": self._store.node_id, "skipped": "edges hold no data"})
            return
        if self._post is None:
            raise RuntimeError("StoreAdmin needs `post` to run backups off the engine thread")
        checkpoint, post, node_id, stopping = self._checkpoint, self._post, self._store.node_id, self._stopping

        def progress(done: int, total: int) -> None:
            self._copying = {"dir": directory, "copied_bytes": done, "total_bytes": total}

        def run() -> None:
            # A checkpoint takes seconds or more (flushes, copies onto another disk): never on the engine thread.
            try:
                taken = checkpoint(Path(directory) / node_id, progress, stopping)
            except Exception as exc:  # the operator needs the reason, the node keeps serving
                # A StoreError says what failed in words; anything else is a bug, named as such.
                failure = {"ok": False, "error": "backup_failed",
                           "detail": str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}",
                           "cause": exc.cause if isinstance(exc, BackupError) else "checkpoint"}
                post(lambda _now: request.reply(failure))
                return
            finally:
                self._copying = None
            # linked: its table files are hard links to the data's own (same disk), not copies
            post(lambda _now: request.reply({"ok": True, "node": node_id, "path": str(taken.path),
                                             "linked": taken.linked}))

        thread = threading.Thread(target=run, name=f"iris-backup-{node_id}", daemon=True)
        with self._backups_lock:
            if stopping.is_set():
                request.reply({"ok": False, "error": "backup_failed", "cause": "stopping",
                               "detail": "the node is stopping: no backup is taken now"})
                return
            self._backups = [t for t in self._backups if t.is_alive()] + [thread]
            thread.start()

    def _put_batch(self, request: Request, now: float) -> None:
        """Write (value null: delete) up to PUT_BATCH_MAX keys of one table; answers once every write is answered."""
        table, items = request.msg.get("table"), request.msg.get("items")
        durability = self._durability(request)
        if durability is None:
            return
        if table not in USER_TABLES:
            request.error("bad_request", f"unknown table {table!r}; tables: {', '.join(USER_TABLES)}")
            return
        if not isinstance(items, list) or not 0 < len(items) <= PUT_BATCH_MAX:
            request.error("bad_request", f"items must be a list of 1 to {PUT_BATCH_MAX} [key, value or null] pairs")
            return
        writes: list[tuple[bytes, bytes | None]] = []
        for item in items:
            pair = item if isinstance(item, list) and len(item) == 2 else (None, None)
            key = _key({"key": pair[0]})
            value = pair[1].encode() if isinstance(pair[1], str) else pair[1]
            if key is None or not (value is None or isinstance(value, bytes)):
                request.error("bad_request", f"bad item {item!r}: want [key, value or null]")
                return
            writes.append((key, value))
        codes: Counter[str] = Counter()
        first_error: list[str] = []

        def one(result: Done) -> None:
            codes[result.code] += 1
            if not result.ok and not first_error:
                first_error.append(f"{result.code}: {result.detail}")
            if sum(codes.values()) == len(writes):
                failed = len(writes) - codes["ok"]
                request.reply({"ok": failed == 0, "written": codes["ok"], "failed": failed, "codes": dict(codes),
                               "error": "partial" if failed else None, "detail": first_error[0] if first_error else ""})

        for key, value in writes:
            self._store.async_put(table, key, value, durability=durability, on_done=one, now=now)

    def _resync(self, request: Request, now: float) -> None:
        """Full anti-entropy pass of this core with every alive peer; answers with what each session did."""
        node, timeout_s = request.msg.get("node"), request.msg.get("wait_s", _RESYNC_DEFAULT_TIMEOUT_S)
        if isinstance(node, str) and node and node != self._store.node_id:
            request.error("wrong_node", f"this is {self._store.node_id}, not {node}")
            return
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
                or not 0 < timeout_s <= _RESYNC_MAX_TIMEOUT_S:
            request.error("bad_request", f"wait_s must be a number of seconds in (0, {_RESYNC_MAX_TIMEOUT_S:g}]")
            return
        if self._store.local is None:
            request.error("not_a_core", f"{self._store.node_id} is an edge: it holds no data to resync")
            return

        def done(results: list[SessionResult]) -> None:
            ok = all(result.ok for result in results)
            request.reply({
                "ok": ok, "node": self._store.node_id, "peers": [result.as_dict() for result in results],
                "pushed": sum(r.pushed for r in results), "pulled": sum(r.pulled for r in results),
                "error": None if ok else "resync_incomplete",
                "detail": "; ".join(f"{r.peer}: {r.code}" for r in results if not r.ok),
            })

        problem = self._store.async_resync(now, float(timeout_s), done)
        if problem is not None:
            request.error("refused", problem)

    def _drop_hints(self, request: Request, now: float) -> None:
        target = request.msg.get("target")
        if not isinstance(target, str) or not target:
            request.error("bad_request", "drop_hints needs a text 'target' (the replica whose hints to forget)")
            return
        dropped = self._store.async_drop_hints(target)
        request.reply({"ok": True, "node": self._store.node_id, "target": target, "dropped": dropped})
