"""Online checkpoints: RocksDB checkpoints onto the data's own filesystem with the memtables already flushed, and a
checkpoint for another filesystem is copied there by the node (RocksDB's own copy would hold the interpreter lock
for all of it, and the node's engine with it)."""

from __future__ import annotations

import errno
import os
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from iris_mesh.store import _checkpoint
from _store_cluster import AdminRequest
from iris_mesh.store._admin import StoreAdmin
from iris_mesh.store._checkpoint import BackupError, Checkpointed, checkpoint
from iris_mesh.store._db import CHECKPOINT_STAGING_PREFIX, TABLES, Database

ROWS = 20_000


class WatchedDatabase(Database):
    """A real database that records where RocksDB was asked to checkpoint and how full the memtables were then."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked: list[tuple[Path, int]] = []

    def checkpoint(self, dest: Path) -> None:
        self.asked.append((dest, self.engine_state()["memtable_bytes"]))
        super().checkpoint(dest)


def fill(db: Database) -> list[tuple[bytes, bytes]]:
    rows = [(b"user%05d\x00m" % i, b"v" * 100) for i in range(ROWS)]
    db.write(("offline_msg", key, value) for key, value in rows)
    return rows


def rows_of(path: Path) -> list[tuple[bytes, bytes]]:
    db = Database(path)
    try:
        assert all(not list(db.iterate(table)) for table in TABLES if table not in ("offline_msg", "meta"))
        return list(db.iterate("offline_msg"))
    finally:
        db.close()


def staging_left(data_dir: Path) -> list[str]:
    return [entry.name for entry in data_dir.iterdir() if entry.name.startswith(CHECKPOINT_STAGING_PREFIX)]


def table_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.sst"))


def test_the_memtables_are_flushed_before_rocksdb_checkpoints_so_it_has_next_to_nothing_to_flush(
        tmp_path: Path) -> None:
    db = WatchedDatabase(tmp_path / "db")
    try:
        rows = fill(db)
        assert db.engine_state()["memtable_bytes"] > 1 << 20
        taken = checkpoint(db, tmp_path / "backup" / "core1")
        [(_, memtable_bytes)] = db.asked
        assert memtable_bytes < 64 << 10  # the empty memtables of the five tables
    finally:
        db.close()
    assert rows_of(taken.path) == rows


def test_a_checkpoint_on_the_datas_filesystem_links_its_table_files_and_leaves_nothing_behind(
        tmp_path: Path) -> None:
    db = WatchedDatabase(tmp_path / "db")
    try:
        rows = fill(db)
        taken = checkpoint(db, tmp_path / "backup" / "core1")
        [(asked, _)] = db.asked
        assert asked.parent == db.path  # inside the data directory: the same filesystem whatever the destination
        assert taken.path == tmp_path / "backup" / "core1" and taken.linked
        assert table_files(taken.path) and all(f.stat().st_nlink == 2 for f in table_files(taken.path))
        assert staging_left(db.path) == []
    finally:
        db.close()
    assert rows_of(taken.path) == rows


@pytest.fixture
def other_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup directory is on another filesystem: renaming the staged checkpoint into it fails with EXDEV."""
    rename = os.rename

    def cross_device(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(src).name.startswith(CHECKPOINT_STAGING_PREFIX):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
        rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", cross_device)


def test_a_checkpoint_for_another_filesystem_is_taken_on_the_datas_and_copied_by_the_node(
        tmp_path: Path, other_filesystem: None) -> None:
    db = WatchedDatabase(tmp_path / "db")
    progress: list[tuple[int, int]] = []
    try:
        rows = fill(db)
        taken = checkpoint(db, tmp_path / "backup" / "core1", lambda done, total: progress.append((done, total)))
        [(asked, _)] = db.asked
        assert asked.parent == db.path  # RocksDB links there; the node copies from there
        assert not taken.linked
        total = sum(f.stat().st_size for f in taken.path.iterdir())
        assert progress[0] == (0, total) and progress[-1] == (total, total)  # told first and after each chunk
        steps = [later[0] - earlier[0] for earlier, later in zip(progress, progress[1:])]
        assert steps and all(0 < step <= _checkpoint._COPY_CHUNK for step in steps)
        assert table_files(taken.path) and all(f.stat().st_nlink == 1 for f in table_files(taken.path))
        assert sorted(os.listdir(tmp_path / "backup")) == ["core1"]  # no partial copy left beside it
        assert staging_left(db.path) == []
    finally:
        db.close()
    assert rows_of(taken.path) == rows


def test_a_copy_that_fails_leaves_neither_a_checkpoint_nor_a_partial_copy(
        tmp_path: Path, other_filesystem: None, monkeypatch: pytest.MonkeyPatch) -> None:
    copy_file = _checkpoint._copy_file
    copied: list[str] = []

    def disk_full_at_the_second_file(src: Path, dst: Path, go_on: Any) -> Any:
        if copied:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        copied.append(str(dst))
        return copy_file(src, dst, go_on)

    monkeypatch.setattr(_checkpoint, "_copy_file", disk_full_at_the_second_file)
    db = Database(tmp_path / "db")
    try:
        fill(db)
        with pytest.raises(BackupError, match=r"^checkpoint into .*/backup/core1 failed: .*No space left on device") \
                as failed:
            checkpoint(db, tmp_path / "backup" / "core1")
        assert failed.value.cause == "checkpoint"
        assert os.listdir(tmp_path / "backup") == []
        assert staging_left(db.path) == []
    finally:
        db.close()


def test_a_partial_copy_in_the_way_is_refused_as_an_earlier_backups(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    try:
        (tmp_path / "backup" / "core1.partial").mkdir(parents=True)
        with pytest.raises(BackupError, match=r"core1.partial already exists") as refused:
            checkpoint(db, tmp_path / "backup" / "core1")
        assert refused.value.cause == "exists"
        assert os.listdir(tmp_path / "backup") == ["core1.partial"]
    finally:
        db.close()


def test_a_staged_checkpoint_a_crash_left_in_the_data_directory_is_deleted_at_the_next_open(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    rows = fill(db)
    db.close()
    left = tmp_path / "db" / f"{CHECKPOINT_STAGING_PREFIX}123-456"
    left.mkdir()
    (left / "000009.sst").write_bytes(b"linked table file")
    db = Database(tmp_path / "db")
    try:
        assert staging_left(db.path) == []
        assert list(db.iterate("offline_msg")) == rows
    finally:
        db.close()


def test_a_copy_is_synced_before_it_takes_the_checkpoints_name(
        tmp_path: Path, other_filesystem: None, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    fsync_tree, rename = _checkpoint.fsync_tree, os.rename

    def synced(root: Path, *go_on: Any) -> None:
        events.append(("synced", Path(root).name))
        fsync_tree(root, *go_on)

    def renamed(src: Any, dst: Any) -> None:
        events.append(("renamed", Path(src).name))
        rename(src, dst)

    monkeypatch.setattr(_checkpoint, "fsync_tree", synced)
    monkeypatch.setattr(os, "rename", renamed)  # over the fixture's: the staging directory's fails as before
    db = Database(tmp_path / "db")
    try:
        fill(db)
        checkpoint(db, tmp_path / "backup" / "core1")
    finally:
        db.close()
    copy = [event for event in events if event[1] == "core1.partial"]
    assert copy == [("synced", "core1.partial"), ("renamed", "core1.partial")]  # a power loss leaves no half copy


def test_a_checkpoint_whose_last_sync_fails_is_not_left_looking_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsync_dir = _checkpoint.fsync_dir

    def failing_for_the_backup_directory(path: Path) -> None:
        if Path(path) == tmp_path / "backup":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        fsync_dir(path)

    monkeypatch.setattr(_checkpoint, "fsync_dir", failing_for_the_backup_directory)
    db = Database(tmp_path / "db")
    try:
        fill(db)
        with pytest.raises(BackupError, match="Input/output error"):
            checkpoint(db, tmp_path / "backup" / "core1")
        assert os.listdir(tmp_path / "backup") == [] and staging_left(db.path) == []
    finally:
        db.close()


def test_a_backup_copying_onto_another_disk_shows_how_far_it_got_until_it_ends(tmp_path: Path) -> None:
    halfway, go_on = threading.Event(), threading.Event()

    def copying(dest: Path, progress: Any, stopping: threading.Event) -> Checkpointed:
        progress(0, 300)
        progress(100, 300)
        halfway.set()
        assert go_on.wait(30)
        progress(300, 300)
        return Checkpointed(dest, linked=False)

    admin = StoreAdmin(types.SimpleNamespace(node_id="core1"), checkpoint=copying,  # type: ignore[arg-type]
                       post=lambda fn: fn(0.0))
    request = AdminRequest(dir=str(tmp_path / "b"))
    assert admin.copying() is None
    admin.ops()["backup"](request, 0.0)
    assert halfway.wait(30)
    assert admin.copying() == {"dir": str(tmp_path / "b"), "copied_bytes": 100, "total_bytes": 300}
    go_on.set()
    for thread in [t for t in threading.enumerate() if t.name == "iris-backup-core1"]:
        thread.join(30)
    assert request.answers == [{"ok": True, "node": "core1", "path": str(tmp_path / "b" / "core1"), "linked": False}]
    assert admin.copying() is None  # done: no more progress to show


def test_a_node_stopping_gives_up_a_copy_onto_another_disk_and_leaves_nothing_of_it(
        tmp_path: Path, other_filesystem: None) -> None:
    stopping = threading.Event()
    copied: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        copied.append((done, total))
        if done:
            stopping.set()  # the node is told to stop while the first file is being copied

    db = Database(tmp_path / "db")
    try:
        fill(db)
        with pytest.raises(BackupError, match=r"^the node is stopping: the checkpoint into .*/backup/core1 was given "
                                              r"up \(nothing of it kept\)$") as given_up:
            checkpoint(db, tmp_path / "backup" / "core1", progress, stopping)
        assert given_up.value.cause == "stopping"
        done, total = copied[-1]
        assert 0 < done < total  # it stopped copying at once, not at the end
        assert os.listdir(tmp_path / "backup") == [] and staging_left(db.path) == []
    finally:
        db.close()


def test_a_node_stopping_before_the_memtables_are_flushed_takes_no_checkpoint(tmp_path: Path) -> None:
    stopping = threading.Event()
    stopping.set()
    db = WatchedDatabase(tmp_path / "db")
    try:
        fill(db)
        with pytest.raises(BackupError, match="the node is stopping") as given_up:
            checkpoint(db, tmp_path / "backup" / "core1", None, stopping)
        assert given_up.value.cause == "stopping" and db.asked == []
        assert staging_left(db.path) == [] and not (tmp_path / "backup" / "core1").exists()
    finally:
        db.close()


def test_a_stopping_node_answers_the_backup_going_on_and_refuses_new_ones(tmp_path: Path) -> None:
    taking = threading.Event()

    def taken_until_the_node_stops(dest: Path, progress: Any, stopping: threading.Event) -> Checkpointed:
        taking.set()
        assert stopping.wait(30)
        raise BackupError("stopping", f"the node is stopping: the checkpoint into {dest} was given up")

    admin = StoreAdmin(types.SimpleNamespace(node_id="core1"),  # type: ignore[arg-type]
                       checkpoint=taken_until_the_node_stops, post=lambda fn: fn(0.0))
    request = AdminRequest(dir=str(tmp_path / "b"))
    admin.ops()["backup"](request, 0.0)
    assert taking.wait(30)
    assert admin.stop_backups(30.0)  # every backup thread ended: the database may be closed
    given_up = {"ok": False, "error": "backup_failed", "cause": "stopping",
                "detail": f"the node is stopping: the checkpoint into {tmp_path / 'b' / 'core1'} was given up"}
    assert request.answers == [given_up]
    later = AdminRequest(dir=str(tmp_path / "c"))
    admin.ops()["backup"](later, 0.0)
    assert later.answers == [{"ok": False, "error": "backup_failed", "cause": "stopping",
                              "detail": "the node is stopping: no backup is taken now"}]
    assert not (tmp_path / "c").exists()


def test_a_backup_that_does_not_end_when_asked_keeps_the_node_from_closing_its_database(tmp_path: Path) -> None:
    release = threading.Event()

    def inside_rocksdb(dest: Path, progress: Any, stopping: threading.Event) -> Checkpointed:
        assert release.wait(30)  # a call that cannot look at `stopping`
        return Checkpointed(dest, linked=True)

    admin = StoreAdmin(types.SimpleNamespace(node_id="core1"),  # type: ignore[arg-type]
                       checkpoint=inside_rocksdb, post=lambda fn: fn(0.0))
    request = AdminRequest(dir=str(tmp_path / "b"))
    admin.ops()["backup"](request, 0.0)
    assert not admin.stop_backups(0.2)
    release.set()
    assert admin.stop_backups(30.0)
    assert request.answers == [{"ok": True, "node": "core1", "path": str(tmp_path / "b" / "core1"), "linked": True}]


def test_a_node_stopping_while_the_copy_is_synced_gives_it_up_too(
        tmp_path: Path, other_filesystem: None, monkeypatch: pytest.MonkeyPatch) -> None:
    stopping = threading.Event()
    fsync, synced = os.fsync, []

    def stop_after_the_first_file(fd: int) -> None:
        fsync(fd)
        if any((tmp_path / "backup").glob("*.partial")):
            synced.append(fd)
            stopping.set()  # told to stop while the copy is being synced (a slow disk takes long here)

    db = Database(tmp_path / "db")
    try:
        fill(db)
        monkeypatch.setattr(os, "fsync", stop_after_the_first_file)
        with pytest.raises(BackupError, match="the node is stopping") as given_up:
            checkpoint(db, tmp_path / "backup" / "core1", None, stopping)
        assert given_up.value.cause == "stopping" and len(synced) == 1  # no file synced after it was told
        assert os.listdir(tmp_path / "backup") == [] and staging_left(db.path) == []
    finally:
        monkeypatch.undo()
        db.close()
