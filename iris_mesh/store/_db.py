"""The node's RocksDB: one database per node, one column family per table.

Atomicity: a single `put`/`delete` on one column family is atomic; a
`WriteBatch` across column families is atomic as a whole. A write is durable
across a crash of the process or machine only once the WAL is synced
(`sync=True` below, or `flush_wal(True)`).
"""

from __future__ import annotations

from pathlib import Path

from rocksdict import Options, Rdict, WriteOptions

__all__ = ["Database", "StoreError", "TABLES"]

TABLES = ("offline_msg", "cross_region_queue", "presence", "hints", "meta")


class StoreError(RuntimeError):
    """The node's data directory cannot be used; the node must not start."""


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    return opts


class Database:
    """An open RocksDB with every table as a column family (byte keys, byte values)."""

    __slots__ = ("path", "_db", "_tables", "_sync")

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()) and not (path / "CURRENT").exists():
            raise StoreError(
                f"{path} is not empty and is not a RocksDB database; refusing to touch it "
                "(point data_dir at an empty or iris_mesh directory)"
            )
        if (path / "CURRENT").exists():
            try:
                existing = set(Rdict.list_cf(str(path), _options()))
            except Exception as exc:
                raise StoreError(f"cannot read the database in {path}: {exc}") from None
            foreign = existing - set(TABLES) - {"default", "raft"}
            if foreign:
                raise StoreError(f"{path} holds tables this node does not know ({sorted(foreign)}); refusing to open it")
        try:
            self._db = Rdict(str(path), _options(), column_families={name: Options(raw_mode=True) for name in TABLES})
        except Exception as exc:
            raise StoreError(f"cannot open the database in {path}: {exc}") from None
        self._tables = {name: self._db.get_column_family(name) for name in TABLES}
        self._sync = WriteOptions()
        self._sync.sync = True

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._tables[table].get(key)

    def put_synced(self, table: str, key: bytes, value: bytes) -> None:
        """Put and fsync the WAL before returning (for rare metadata writes only: holds the GIL during the sync)."""
        self._tables[table].put(key, value, self._sync)

    def close(self) -> None:
        for table in self._tables.values():
            table.close()
        self._tables = {}
        self._db.close()
