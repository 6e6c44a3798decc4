"""Database: tables as column families, atomic batches, and refusing directories that are not ours."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from iris_mesh.store._db import (
    ENGINE_FIELDS, ENGINE_PROPERTIES, MAX_WAL_BYTES, TABLES, Database, StoreError, held_by_this_process,
)
from support.store_holder import held_by_another_process
from support.waiting import wait_until


def tree(path: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `path` with its size, mtime and content hash."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def make_db(path: Path) -> None:
    db = Database(path)
    db.write([("offline_msg", b"k", b"v")])
    db.close()


def test_write_is_one_batch_across_tables_and_iterate_follows_key_order(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    try:
        assert db.write([("offline_msg", b"b", b"2"), ("presence", b"u", b"on"), ("offline_msg", b"a", b"1")]) == 3
        assert db.write([("offline_msg", b"b", None), ("offline_msg", b"c", b"3")]) == 2
        assert db.write([]) == 0
        db.flush_wal_synced()
        assert db.get("presence", b"u") == b"on"
        assert db.get("offline_msg", b"b") is None
        assert list(db.iterate("offline_msg")) == [(b"a", b"1"), (b"c", b"3")]
        assert list(db.iterate("offline_msg", start=b"b")) == [(b"c", b"3")]
        assert list(db.iterate("offline_msg", prefix=b"a")) == [(b"a", b"1")]
        assert list(db.iterate("presence", prefix=b"x")) == []
        db.put_synced("meta", b"node_id", b"core1")
        assert db.get("meta", b"node_id") == b"core1"
    finally:
        db.close()
    db.close()  # idempotent


def test_a_prefix_read_ends_with_its_prefix_whatever_bytes_the_prefix_ends_in(tmp_path: Path) -> None:
    # A prefix read is bounded at the prefix's end (RocksDB then never steps over the deleted keys past it).
    db = Database(tmp_path / "db")
    try:
        keys = [b"a", b"a\xff", b"a\xff\x00", b"a\xff\xff\x01", b"b", b"\xff\xff", b"\xff\xff\xff"]
        db.write([("hints", key, b"v") for key in keys])
        assert [k for k, _ in db.iterate("hints", prefix=b"a\xff")] == [b"a\xff", b"a\xff\x00", b"a\xff\xff\x01"]
        assert [k for k, _ in db.iterate("hints", prefix=b"a\xff", start=b"a\xff\x01")] == [b"a\xff\xff\x01"]
        assert [k for k, _ in db.iterate("hints", prefix=b"\xff\xff")] == [b"\xff\xff", b"\xff\xff\xff"]
        assert [k for k, _ in db.iterate("hints", prefix=b"a")] == keys[:4]
        assert len(list(db.iterate("hints"))) == len(keys)
    finally:
        db.close()


def test_engine_state_shows_memtables_filling_and_level0_files_after_recovery(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    try:
        # Every property is one RocksDB knows (an unknown one reads as None, which engine_state would show as 0).
        assert [prop for _, prop, _ in ENGINE_PROPERTIES if db._db.property_int_value(prop) is None] == []
        idle = db.engine_state()
        assert sorted(idle) == sorted(ENGINE_FIELDS)
        assert idle["table_file_bytes"] == idle["l0_files"] == 0
        assert idle["flushes_running"] == idle["compactions_running"] == 0
        assert idle["delayed_write_rate"] == idle["writes_stopped"] == 0
        db.write([("offline_msg", b"k%05d" % i, b"v" * 100) for i in range(5000)])
        busy = db.engine_state()
        assert busy["memtable_bytes"] > idle["memtable_bytes"] + 5000 * 100
        assert busy["wal_bytes"] > idle["wal_bytes"] + 5000 * 100
    finally:
        db.close()
    db = Database(tmp_path / "db")  # recovery replays the WAL into a level-0 file
    try:
        state = db.engine_state()
        assert state["l0_files"] >= 1 and state["writes_stopped"] == 0
        assert state["table_file_bytes"] > 0
    finally:
        db.close()


def test_the_wal_stays_bounded_while_a_rarely_written_table_holds_its_oldest_file(tmp_path: Path) -> None:
    # `meta` gets a row now and then (the clock save) and would never flush by itself, so without the
    # bound every WAL file since the open would stay, and be replayed at the next start.
    path, bound = tmp_path / "db", 2 << 20
    value = b"v" * 100
    db = Database(path, max_wal_bytes=bound)
    try:
        for batch in range(200):  # ~23 MB of WAL, less than offline_msg's memtable holds before it flushes by itself
            if batch % 20 == 0:
                db.write([("meta", b"last_hlc", batch.to_bytes(8, "big"))])
            db.write([("offline_msg", b"bob\x00%08d" % (batch * 1000 + i), value) for i in range(1000)])
        wait_until(lambda: db.engine_state()["wal_bytes"] <= 2 * bound, 10.0, "the WAL to shrink to twice the bound")
    finally:
        db.close()
    db = Database(path)
    try:
        assert db.get_many("offline_msg", [b"bob\x00%08d" % 0, b"bob\x00%08d" % 199_999]) == [value, value]
        assert db.get("meta", b"last_hlc") == (180).to_bytes(8, "big")
    finally:
        db.close()


def test_a_database_opened_with_the_defaults_has_its_wal_bounded(tmp_path: Path) -> None:
    Database(tmp_path / "db").close()
    (options,) = (tmp_path / "db").glob("OPTIONS-*")  # what RocksDB runs with, written at the open
    assert f"max_total_wal_size={MAX_WAL_BYTES}\n" in options.read_text()


def test_data_is_there_after_reopen_and_the_open_is_tracked(tmp_path: Path) -> None:
    path = tmp_path / "db"
    make_db(path)
    assert not held_by_this_process(path)
    db = Database(path)
    try:
        assert held_by_this_process(path)
        assert db.get("offline_msg", b"k") == b"v"
    finally:
        db.close()
    assert not held_by_this_process(path)


def test_a_directory_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.mkdir()
    (path / "notes.txt").write_text("someone's files")
    before = tree(path)
    with pytest.raises(StoreError, match="not a RocksDB database"):
        Database(path)
    assert tree(path) == before


def test_a_data_directory_that_cannot_be_made_is_a_store_error_that_names_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a directory")
    with pytest.raises(StoreError, match=r"cannot use .*file/data as the data directory: Not a directory"):
        Database(tmp_path / "file" / "data")


@pytest.mark.parametrize("damage", ["CURRENT", "MANIFEST"])
def test_a_damaged_database_is_refused_and_left_alone(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "db"
    make_db(path)
    if damage == "CURRENT":
        (path / "CURRENT").write_text("MANIFEST-999999\n")
    else:
        for manifest in path.glob("MANIFEST-*"):
            manifest.write_bytes(b"\x00garbage" * 10)
    before = tree(path)
    with pytest.raises(StoreError, match="damaged"):
        Database(path)
    assert tree(path) == before


def test_a_rocksdb_of_another_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other"
    other = Rdict(str(path), Options(raw_mode=True))
    other[b"theirs"] = b"data"
    other.close()
    before = tree(path)
    with pytest.raises(StoreError, match="another program"):
        Database(path)
    assert tree(path) == before


def test_a_database_with_unknown_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    cfs = {name: Options(raw_mode=True) for name in (*TABLES, "mystery")}
    Rdict(str(path), opts, column_families=cfs).close()
    with pytest.raises(StoreError, match="mystery"):
        Database(path)


def test_a_database_in_use_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    db = Database(path)
    try:
        with pytest.raises(StoreError, match="already open in this process"):
            Database(path)
    finally:
        db.close()
    with held_by_another_process(path):
        with pytest.raises(StoreError, match="in use by another process"):
            Database(path)
    Database(path).close()


def test_a_damaged_table_file_fails_reads_loudly_instead_of_cutting_scans_short(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    db.write([("offline_msg", b"k%03d" % i, b"v" * 200) for i in range(200)])
    db._tables["offline_msg"].flush()  # into a table file
    db.close()
    (table_file,) = (tmp_path / "db").glob("*.sst")
    damaged = bytearray(table_file.read_bytes())
    damaged[100] ^= 0xFF  # one flipped byte in the first data block
    table_file.write_bytes(bytes(damaged))
    db = Database(tmp_path / "db")  # opens: RocksDB reads data blocks only when asked for them
    try:
        # An iteration that stopped at the damage looked like the end of the table: an empty inbox, a short scan.
        with pytest.raises(StoreError, match="reading table offline_msg .* failed: Corruption"):
            list(db.iterate("offline_msg"))
        with pytest.raises(StoreError, match="the data directory is damaged"):
            db.get("offline_msg", b"k001")
        with pytest.raises(StoreError, match="Corruption"):
            db.get_many("offline_msg", [b"k001", b"k002"])
    finally:
        db.close()
