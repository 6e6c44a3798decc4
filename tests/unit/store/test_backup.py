"""Backups: online checkpoints while writes go on, and an offline restore that never loses the old data by accident
nor puts back a backup that the cores it lacks would undo."""

from __future__ import annotations

import collections
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from rocksdict import Options, Rdict

from iris_mesh.store._backup import (
    MissingCores,
    kept_aside,
    restore,
    restore_all,
    restore_backup,
    set_aside,
)
from iris_mesh.store._checkpoint import BackupError, checkpoint
from iris_mesh.store._db import TABLES, Database, StoreError
from iris_mesh.store._local import LocalStore
from iris_mesh.store._meta import RESTORED_KEY, NodeMeta, seed_directory
from iris_mesh.store._restore_mark import write_markers
from iris_mesh.store._versioned import Version, Versioned
from support.store_holder import held_by_another_process
from support.waiting import wait_until


def v(hlc: int, value: bytes | None = b"x") -> Versioned:
    return Versioned(Version(hlc, "n1"), value)


def tree(path: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(path)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def dump(path: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every row of every table."""
    db = Database(path)
    try:
        return {table: list(db.iterate(table)) for table in TABLES}
    finally:
        db.close()


def restored_dump(path: Path) -> tuple[dict[str, list[tuple[bytes, bytes]]], dict[str, str]]:
    """Every row of a restored copy, less the note the restore left for the node's log; and that note."""
    rows = dump(path)
    notes = [json.loads(value) for key, value in rows["meta"] if key == RESTORED_KEY]
    rows["meta"] = [(key, value) for key, value in rows["meta"] if key != RESTORED_KEY]
    assert len(notes) == 1, rows["meta"]
    return rows, notes[0]


def commit_now(db: Database, writes: list[tuple[str, bytes, Versioned]]) -> None:
    """Apply writes through a LocalStore and wait until they are durable (test thread as engine)."""
    mailbox: collections.deque[Callable[[float], None]] = collections.deque()
    store = LocalStore(db, post=mailbox.append)
    store.start()
    done: list[bool] = []
    for table, key, item in writes:
        store.async_apply(table, key, item, done.append)

    def turn() -> bool:
        while mailbox:
            mailbox.popleft()(0.0)
        store.async_end_of_batch()
        return len(done) == len(writes)

    wait_until(turn, 10.0, "the writes to be durable", interval_s=0.001)
    assert all(done)
    store.close()


class EngineThread:
    """A tiny real engine loop: one turn writes key i to two tables in one batch, then runs completions."""

    def __init__(self, db: Database) -> None:
        self.mailbox: collections.deque[Callable[[float], None]] = collections.deque()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.store = LocalStore(db, post=self.post)
        self.acked = 0
        self.thread = threading.Thread(target=self.run, name="test-engine")

    def post(self, fn: Callable[[float], None]) -> None:
        self.mailbox.append(fn)
        self.wake.set()

    def run(self) -> None:
        self.store.start()
        i = 0
        while not self.stop.is_set():
            key = b"%08d" % i
            self.store.async_apply("offline_msg", key, v(i + 1, key), self.on_durable)
            self.store.async_apply("presence", key, v(i + 1, key))
            i += 1
            self.store.async_end_of_batch()
            self.wake.wait(0.002)
            self.wake.clear()
            while self.mailbox:
                self.mailbox.popleft()(0.0)
        self.store.close()

    def on_durable(self, ok: bool) -> None:
        self.acked += ok


def test_checkpoint_while_writes_continue_is_consistent(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    engine = EngineThread(db)
    engine.thread.start()
    try:
        wait_until(lambda: engine.acked >= 50, 30.0, "writes to be flowing")
        first = checkpoint(db, tmp_path / "backup1").path
        acked_at_first = engine.acked
        wait_until(lambda: engine.acked >= acked_at_first + 50, 30.0, "writes to go on after the checkpoint")
        second = checkpoint(db, tmp_path / "backups" / "two").path
    finally:
        engine.stop.set()
        engine.thread.join(30)
        db.close()
    sizes = []
    for backup in (first, second):
        rows = dump(backup)
        msgs = [int(k) for k, _ in rows["offline_msg"]]
        presence = [int(k) for k, _ in rows["presence"]]
        # batches commit in order and atomically: a prefix of the writes, both tables alike
        assert msgs == list(range(len(msgs))), "a checkpoint has a gap"
        assert presence == msgs, "a checkpoint split a batch"
        sizes.append(len(msgs))
    assert 50 <= sizes[0] < sizes[1]


def test_checkpoint_into_an_existing_directory_is_refused(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    try:
        (tmp_path / "taken").mkdir()
        with pytest.raises(BackupError, match="already exists") as refused:
            checkpoint(db, tmp_path / "taken")
        assert refused.value.cause == "exists"  # what meshctl's advice goes by
    finally:
        db.close()


def test_checkpoint_into_a_directory_that_cannot_be_created_says_so(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    try:
        (tmp_path / "file").write_text("")
        with pytest.raises(BackupError, match=r"^cannot create the directory .*/file/backup: Not a directory$") \
                as failed:
            checkpoint(db, tmp_path / "file" / "backup" / "core1")
        assert failed.value.cause == "create"
    finally:
        db.close()


def test_a_checkpoint_that_fails_while_written_says_so(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    db.close()
    with pytest.raises(BackupError, match=r"^checkpoint into .*/backup/core1 failed: ") as failed:
        checkpoint(db, tmp_path / "backup" / "core1")
    assert failed.value.cause == "checkpoint"


def test_restore_replaces_the_state_exactly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = Database(data)
    commit_now(db, [("offline_msg", b"a", v(1)), ("offline_msg", b"b", v(1)), ("presence", b"u", v(1, None))])
    db.put_synced("meta", b"node_id", b"core1")
    backup = checkpoint(db, tmp_path / "backup").path
    commit_now(db, [("offline_msg", b"a", v(2, None)), ("offline_msg", b"c", v(2)), ("hints", b"h", v(2))])
    db.close()
    at_checkpoint = dump(backup)
    before_restore = dump(data)
    assert before_restore != at_checkpoint
    kept = restore(backup, data)
    restored, note = restored_dump(data)
    assert restored == at_checkpoint
    assert restored["offline_msg"][0][0] == b"a"  # the later delete is gone with the rest
    # A note for the node's log at its next start: which backup, and when it went back.
    assert note["from"] == str(backup.resolve()) and re.fullmatch(r"\d{8}T\d{6}Z", note["at"]), note
    # The replaced data is kept beside it, whole, in case the wrong backup was put back; no temp copies left.
    assert kept is not None and re.fullmatch(r"data\.replaced-\d{8}T\d{6}Z", kept.name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "data", kept.name]
    assert dump(kept) == before_restore


def test_a_restore_asked_to_delete_the_replaced_data_leaves_only_the_restored_copy(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = Database(data)
    commit_now(db, [("offline_msg", b"a", v(1))])
    backup = checkpoint(db, tmp_path / "backup").path
    commit_now(db, [("offline_msg", b"b", v(1))])
    db.close()
    assert restore(backup, data, keep_replaced=False) is None
    assert [k for k, _ in dump(data)["offline_msg"]] == [b"a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "data"]


def test_two_restores_in_the_same_second_keep_both_replaced_directories(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    db = Database(data)
    commit_now(db, [("offline_msg", b"a", v(1))])
    backup = checkpoint(db, tmp_path / "backup").path
    db.close()
    monkeypatch.setattr("iris_mesh.store._backup._utc_stamp", lambda: "20270115T080000Z")
    first, second = restore(backup, data), restore(backup, data)
    assert first is not None and second is not None
    assert (first.name, second.name) == ("data.replaced-20270115T080000Z", "data.replaced-20270115T080000Z-2")


def test_restore_into_a_missing_data_directory(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    commit_now(db, [("offline_msg", b"a", v(1))])
    backup = checkpoint(db, tmp_path / "backup").path
    db.close()
    before = tree(backup)
    restore(backup, tmp_path / "new" / "data")
    assert restored_dump(tmp_path / "new" / "data")[0] == dump(tmp_path / "db")
    assert tree(backup) == before  # restore copies; the backup stays usable


def test_restore_refuses_while_the_database_is_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = Database(data)
    commit_now(db, [("offline_msg", b"a", v(1))])
    backup = checkpoint(db, tmp_path / "backup").path
    commit_now(db, [("offline_msg", b"b", v(1))])
    try:
        with pytest.raises(StoreError, match="open in this process"):
            restore(backup, data)
        assert db.get("offline_msg", b"b") is not None
    finally:
        db.close()
    with held_by_another_process(data):
        with pytest.raises(StoreError, match="in use by another process"):
            restore(backup, data)
    assert [k for k, _ in dump(data)["offline_msg"]] == [b"a", b"b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "data"]


def two_cores_backed_up(tmp_path: Path) -> list[tuple[Path, Path]]:
    """data/core1 and data/core2, each with row `a` in its checkpoint under backup/ and `after-backup` written since."""
    pairs = []
    for name in ("core1", "core2"):
        db = Database(tmp_path / "data" / name)
        commit_now(db, [("offline_msg", b"a", v(1))])
        backup = checkpoint(db, tmp_path / "backup" / name).path
        commit_now(db, [("offline_msg", b"after-backup", v(2))])
        db.close()
        pairs.append((backup, tmp_path / "data" / name))
    return pairs


def fail_renames_into_core2(monkeypatch: pytest.MonkeyPatch, sources: tuple[str, ...], error: OSError) -> None:
    """Make restore's renames onto a data directory named core2, from a path containing any of `sources`, fail."""
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(dst).name == "core2" and any(part in str(src) for part in sources):
            raise error
        real_rename(src, dst)

    monkeypatch.setattr("iris_mesh.store._backup.os.rename", rename)


def test_a_restore_of_several_cores_changes_none_while_any_of_them_is_in_use(tmp_path: Path) -> None:
    # With core1 stopped and core2 still running, putting back a whole backup must not replace core1's data
    # and then stop at core2: every database is checked and locked before anything changes.
    pairs = two_cores_backed_up(tmp_path)
    before = {name: dump(tmp_path / "data" / name) for name in ("core1", "core2")}
    lines: list[str] = []
    with held_by_another_process(tmp_path / "data" / "core2"):
        with pytest.raises(StoreError, match=r"data/core2 is in use by another process .*nothing was changed"):
            restore_all(pairs, progress=lines.append)
    assert {name: dump(tmp_path / "data" / name) for name in ("core1", "core2")} == before
    assert lines == []  # refused before any copy started
    restore_all(pairs, progress=lines.append)
    assert [k for k, _ in dump(tmp_path / "data" / "core1")["offline_msg"]] == [b"a"]
    assert [k for k, _ in dump(tmp_path / "data" / "core2")["offline_msg"]] == [b"a"]
    assert len(lines) == 2 and "core1" in lines[0] and "core2" in lines[1]
    names = sorted(p.name for p in (tmp_path / "data").iterdir())  # no temp copies left; the replaced data kept
    when = names[1].removeprefix("core1.replaced-")
    assert names == ["core1", f"core1.replaced-{when}", "core2", f"core2.replaced-{when}"]
    assert [k for k, _ in dump(tmp_path / "data" / names[3])["offline_msg"]] == [b"a", b"after-backup"]


def test_a_restore_of_several_cores_names_every_refused_checkpoint(tmp_path: Path) -> None:
    db = Database(tmp_path / "data" / "core1")
    checkpoint(db, tmp_path / "backup" / "core1")
    commit_now(db, [("offline_msg", b"after-backup", v(1))])
    db.close()
    for name in ("core2", "core3"):
        (tmp_path / "backup" / name).mkdir()
    pairs = [(tmp_path / "backup" / name, tmp_path / "data" / name) for name in ("core1", "core2", "core3")]
    before = dump(tmp_path / "data" / "core1")
    with pytest.raises(StoreError, match=r"backup/core2 is not a database checkpoint.*backup/core3 is not a database"):
        restore_all(pairs)
    assert dump(tmp_path / "data" / "core1") == before  # core1's checkpoint was fine, and still not put back


def test_a_restore_that_fails_while_swapping_puts_every_old_directory_back(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = two_cores_backed_up(tmp_path)
    before = {name: dump(tmp_path / "data" / name) for name in ("core1", "core2")}
    # core1's copy is in place already when core2's cannot be renamed in
    fail_renames_into_core2(monkeypatch, (".restore-",), OSError(28, "No space left on device"))
    with pytest.raises(StoreError, match="No space left on device.*every data directory is as it was"):
        restore_all(pairs)
    monkeypatch.undo()
    assert {name: dump(tmp_path / "data" / name) for name in ("core1", "core2")} == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["core1", "core2"]


def test_a_restore_that_cannot_put_an_old_directory_back_says_where_it_is(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = two_cores_backed_up(tmp_path)
    before = dump(tmp_path / "data" / "core1")
    # neither the copy nor the old core2 can be renamed in
    fail_renames_into_core2(monkeypatch, (".restore-", ".replaced-"), OSError(5, "Input/output error"))
    with pytest.raises(StoreError, match=r"could not put back the old data of .*data/core2 .*its old data is in "
                                         r".*/core2\.replaced-") as refused:
        restore_all(pairs)
    monkeypatch.undo()
    old = Path(str(refused.value).rsplit("its old data is in ", 1)[1].split(")")[0])
    assert [k for k, _ in dump(old)["offline_msg"]] == [b"a", b"after-backup"]  # core2's data, where the error says
    assert dump(tmp_path / "data" / "core1") == before  # core1 was put back
    with pytest.raises(StoreError, match=r"a restore into .*data/core2 did not finish"):
        Database(tmp_path / "data" / "core2")  # not started on whatever is there until someone looked
    assert not (tmp_path / "data" / ".core1.restoring").exists()


# Runs restore_all on argv[1:] (checkpoint, data directory, ...) and is SIGKILLed right after core2's data went
# aside, before its copy is renamed in: core1 is restored by then, core2 has no data directory at all.
_KILLED_RESTORE = """
import os, signal, sys
from pathlib import Path
from iris_mesh.store import _backup

real_rename = os.rename

def rename(src, dst):
    real_rename(src, dst)
    if Path(dst).name.startswith("core2.replaced-"):
        os.kill(os.getpid(), signal.SIGKILL)

_backup.os.rename = rename
args = [Path(arg) for arg in sys.argv[1:]]
_backup.restore_all(list(zip(args[::2], args[1::2])))
"""


def test_a_restore_killed_between_its_renames_stops_the_nodes_until_it_is_run_again(tmp_path: Path) -> None:
    pairs = two_cores_backed_up(tmp_path)
    data = tmp_path / "data"
    child = subprocess.run([sys.executable, "-c", _KILLED_RESTORE, *(str(p) for pair in pairs for p in pair)],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    look = shutil.copytree(data / "core1", tmp_path / "look" / "core1")  # a copy: core1 itself does not open now
    assert [k for k, _ in dump(look)["offline_msg"]] == [b"a"]  # restored
    assert not (data / "core2").exists()  # aside, its copy not in yet
    # Neither core opens: core1 would hand nothing back, but core2 would start empty next to a half-done restore.
    for name in ("core1", "core2"):
        with pytest.raises(StoreError, match=rf"a restore into .*data/{name} did not finish \(started \d{{8}}T\d{{6}}Z "
                                             rf"from .*backup/{name}\).*Run the same `meshctl restore` again"):
            Database(data / name)
    assert not (data / "core2").exists()  # the refusal made no empty directory either
    # A second try that fails too puts back the half-done state, and with it the first one's marks.
    with pytest.MonkeyPatch.context() as patch:
        fail_renames_into_core2(patch, (".restore-",), OSError(28, "No space left on device"))
        with pytest.raises(StoreError, match="No space left on device.*every data directory is as it was"):
            restore_all(pairs)
    for name in ("core1", "core2"):
        with pytest.raises(StoreError, match=rf"a restore into .*data/{name} did not finish"):
            Database(data / name)
    lines: list[str] = []
    restore_all(pairs, progress=lines.append)
    assert sum("did not finish" in line for line in lines) == 2, lines
    for name in ("core1", "core2"):
        assert [k for k, _ in dump(data / name)["offline_msg"]] == [b"a"]
    left = sorted(p.name for p in data.iterdir())
    assert not [name for name in left if name.startswith(".")], left  # no marks, no copies the killed one staged
    replaced = [name for name in left if ".replaced-" in name]
    # core1's own data and its first restored copy, and core2's own data: all kept until the operator deletes them
    assert len(replaced) == 3 and sum(name.startswith("core2.") for name in replaced) == 1, left
    core2_own = data / next(name for name in replaced if name.startswith("core2."))
    assert [k for k, _ in dump(core2_own)["offline_msg"]] == [b"a", b"after-backup"]


@pytest.mark.parametrize("kind", ["empty", "garbage", "damaged", "foreign"])
def test_restore_refuses_a_checkpoint_that_is_not_a_valid_database(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    db = Database(data)
    commit_now(db, [("offline_msg", b"a", v(1))])
    db.close()
    bad = tmp_path / "bad"
    if kind == "empty":
        bad.mkdir()
    elif kind == "garbage":
        bad.mkdir()
        (bad / "CURRENT").write_text("nonsense\n")
    elif kind == "damaged":
        db = Database(tmp_path / "src")
        checkpoint(db, bad)
        db.close()
        for manifest in bad.glob("MANIFEST-*"):
            manifest.write_bytes(b"\x00" * 64)
    else:
        other = Rdict(str(bad), Options(raw_mode=True))
        other[b"k"] = b"v"
        other.close()
    before = tree(data)
    with pytest.raises(StoreError, match="nothing was changed|not a database checkpoint"):
        restore(bad, data)
    assert tree(data) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp copies left


def test_restore_refuses_to_replace_a_directory_that_is_not_a_database(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    backup = checkpoint(db, tmp_path / "backup").path
    db.close()
    target = tmp_path / "precious"
    target.mkdir()
    (target / "file.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a database"):
        restore(backup, target)
    assert (target / "file.txt").read_text() == "keep me"


def node_data(path: Path, node_id: str, expected: set[str], *batches: list[tuple[str, bytes, Versioned]],
              backup: Path | None = None, cluster: str = "iris") -> None:
    """A node's data directory as the node leaves it: its meta, then each batch; checkpointed into `backup` after the first."""
    db = Database(path)
    try:
        meta = NodeMeta(db)
        meta.claim(node_id, cluster)
        meta.save_expected_cores("local", expected)
        for n, batch in enumerate(batches):
            if n == 1 and backup is not None:
                checkpoint(db, backup)
            commit_now(db, batch)
    finally:
        db.close()


CORES = {"core1", "core2", "core3"}
A, AFTER = [("offline_msg", b"a", v(1))], [("offline_msg", b"after-backup", v(2))]


def backed_up_while_core3_was_down(tmp_path: Path) -> tuple[list[Path], Path]:
    """backup/ holds core1 and core2 (each: row `a`); data/ holds core1..3 with `after-backup` since, and edge1's.

    Returns the checkpoints and the data root.
    """
    for core in ("core1", "core2"):
        node_data(tmp_path / "data" / core, core, CORES, A, AFTER, backup=tmp_path / "backup" / core)
    node_data(tmp_path / "data" / "core3", "core3", CORES, A, AFTER)  # restarted after the backup, caught up
    node_data(tmp_path / "data" / "edge1", "edge1", CORES)  # an edge never expects itself
    return sorted((tmp_path / "backup").iterdir()), tmp_path / "data"


def everything(root: Path) -> dict[str, Any]:
    """Every directory and file under `root`, with each file's size, hash and time (read without opening a database)."""
    return {"dirs": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()),
            "files": {name: (size, digest, (root / name).stat().st_mtime_ns) for name, (size, digest) in tree(root).items()}}


def test_a_backup_that_lacks_a_core_whose_data_is_there_is_refused_before_anything_changes(tmp_path: Path) -> None:
    # core3 was down during the backup; its own data, newer than the backup, would flow back to the
    # restored cores once the cluster runs and undo the restore without a word.
    checkpoints, data = backed_up_while_core3_was_down(tmp_path)
    before, backup_before = everything(data), everything(tmp_path / "backup")
    lines: list[str] = []
    with pytest.raises(MissingCores, match=r"no checkpoint of core3 \(.*/data/core3\); nothing was changed") as refused:
        restore_backup(checkpoints, data, progress=lines.append)
    assert refused.value.missing == {"core3": data.resolve() / "core3"}
    assert lines == []  # refused before any copy started
    assert everything(data) == before
    assert everything(tmp_path / "backup") == backup_before  # the checkpoints were read, not written to


@pytest.mark.parametrize("keep_replaced", [True, False])
def test_a_restore_without_the_missing_cores_moves_their_data_aside_so_they_start_empty(tmp_path: Path,
                                                                                         keep_replaced: bool) -> None:
    checkpoints, data = backed_up_while_core3_was_down(tmp_path)
    edge_before = everything(tmp_path / "data" / "edge1")
    done = restore_backup(checkpoints, data, without_missing=True, keep_replaced=keep_replaced)
    for core in ("core1", "core2"):
        assert [k for k, _ in dump(data / core)["offline_msg"]] == [b"a"]
    assert list((data / "core3").iterdir()) == []  # core3 starts empty
    assert everything(data / "edge1") == edge_before  # an edge holds no data: left as it was
    assert list(done.kept) == ["core1", "core2"] and list(done.emptied) == ["core3"] and done.elsewhere == ()
    names = sorted(p.name for p in data.iterdir())
    if not keep_replaced:
        assert done.emptied == {"core3": None} and names == ["core1", "core2", "core3", "edge1"]
        return
    aside = done.emptied["core3"]
    assert aside is not None and re.fullmatch(r"core3\.replaced-\d{8}T\d{6}Z", aside.name)
    assert [k for k, _ in dump(aside)["offline_msg"]] == [b"a", b"after-backup"]  # kept whole, like replaced data
    when = aside.name.removeprefix("core3.replaced-")
    assert names == ["core1", f"core1.replaced-{when}", "core2", f"core2.replaced-{when}", "core3",
                     f"core3.replaced-{when}", "edge1"]
    # The data kept aside is no core's data directory: restored again, core3 is missing with no data here.
    again = restore_backup(checkpoints, data, without_missing=True)
    assert (again.emptied, again.elsewhere) == ({}, ("core3",))


def test_a_restore_without_the_missing_cores_killed_before_its_marks_went_is_finished_by_running_it_again(
    tmp_path: Path,
) -> None:
    checkpoints, data = backed_up_while_core3_was_down(tmp_path)
    restore_backup(checkpoints, data, without_missing=True)
    # As if killed after the swap and before the marks were removed: core3 is empty, and marked.
    write_markers({(data / name).resolve(): {"started": "20261129T120000Z", "from": None, "staged": None}
                   for name in ("core1", "core2", "core3")})
    with pytest.raises(StoreError, match="did not finish"):
        Database(data / "core3")
    done = restore_backup(checkpoints, data, without_missing=True)  # what the refusal says to do
    assert list(done.emptied) == ["core3"] and done.elsewhere == ()
    assert list((data / "core3").iterdir()) == []
    assert [k for k, _ in dump(data / "core2")["offline_msg"]] == [b"a"]
    for name in ("core1", "core2", "core3"):
        Database(data / name).close()  # every core starts again


def test_a_core_the_checkpoints_expect_is_missing_even_with_no_data_directory_here(tmp_path: Path) -> None:
    checkpoints, data = backed_up_while_core3_was_down(tmp_path)
    shutil.rmtree(data / "core3")  # its disk is elsewhere, or lost: this restore cannot tell
    with pytest.raises(MissingCores) as refused:
        restore_backup(checkpoints, data)
    assert refused.value.missing == {"core3": None}
    done = restore_backup(checkpoints, data, without_missing=True)
    # Its data, if any, is where this restore cannot reach: said apart from the cores it emptied.
    assert (done.emptied, done.elsewhere) == ({}, ("core3",)) and not (data / "core3").exists()
    assert [k for k, _ in dump(data / "core2")["offline_msg"]] == [b"a"]


def test_a_missing_core_whose_data_directory_is_a_link_starts_empty_through_it(tmp_path: Path) -> None:
    checkpoints, data = backed_up_while_core3_was_down(tmp_path)
    disk = tmp_path / "other-disk"
    disk.mkdir()
    (data / "core3").rename(disk / "core3")
    (data / "core3").symlink_to(disk / "core3")
    done = restore_backup(checkpoints, data, without_missing=True)
    assert list(done.emptied) == ["core3"] and (data / "core3").is_symlink()
    assert list((data / "core3").iterdir()) == []  # the link leads to an empty directory: core3 starts empty
    aside = done.emptied["core3"]
    assert aside is not None and aside.parent == disk
    assert [k for k, _ in dump(aside)["offline_msg"]] == [b"a", b"after-backup"]


def test_a_database_directory_that_cannot_be_read_is_refused_not_skipped(tmp_path: Path) -> None:
    checkpoints, data = backed_up_while_core3_was_down(tmp_path)
    (data / "core3" / "CURRENT").write_text("MANIFEST-999999\n")  # damaged: it may still be a core's data
    before = everything(data)
    with pytest.raises(StoreError, match=r"cannot tell whether .*data/core3 .*holds a core's data.*nothing was changed"):
        restore_backup(checkpoints, data, without_missing=True)
    assert everything(data) == before


def test_a_core_that_joined_after_the_backup_is_missing_too(tmp_path: Path) -> None:
    checkpoints, data = backed_up_while_core3_was_down(tmp_path)
    node_data(data / "core4", "core4", CORES | {"core4"}, A)  # the checkpoints do not know it; its data says core
    with pytest.raises(MissingCores) as refused:
        restore_backup(checkpoints, data)
    assert sorted(refused.value.missing) == ["core3", "core4"]


def test_a_restore_without_the_missing_cores_changes_nothing_while_one_of_them_runs(tmp_path: Path) -> None:
    checkpoints, data = backed_up_while_core3_was_down(tmp_path)
    before = {name: everything(data / name) for name in ("core1", "core2", "edge1")}
    with held_by_another_process(data / "core3"):
        with pytest.raises(StoreError, match=r"data/core3 is in use by another process .*nothing was changed"):
            restore_backup(checkpoints, data, without_missing=True)
        assert sorted(p.name for p in data.iterdir()) == ["core1", "core2", "core3", "edge1"]
    assert {name: everything(data / name) for name in ("core1", "core2", "edge1")} == before
    assert [k for k, _ in dump(data / "core3")["offline_msg"]] == [b"a", b"after-backup"]


def test_a_backup_of_another_cluster_is_refused_before_anything_changes(tmp_path: Path) -> None:
    # Two clusters with the same core names: restoring staging's backup over prod's data would put
    # staging's messages in prod's inboxes.
    for core in sorted(CORES):
        node_data(tmp_path / "staging" / core, core, CORES, A, AFTER, backup=tmp_path / "backup" / core,
                  cluster="staging")
        node_data(tmp_path / "data" / core, core, CORES, A, AFTER, cluster="prod")
    checkpoints, data = sorted((tmp_path / "backup").iterdir()), tmp_path / "data"
    before = everything(data)
    with pytest.raises(StoreError, match=r"checkpoint .*backup/core1 is of cluster 'staging', the data in "
                                         r".*data/core1 of cluster 'prod'.*nothing was changed"):
        restore_backup(checkpoints, data)
    assert everything(data) == before


def test_checkpoints_of_different_clusters_are_not_restored_together(tmp_path: Path) -> None:
    for core in sorted(CORES):
        node_data(tmp_path / "old" / core, core, CORES, A, AFTER, backup=tmp_path / "backup" / core,
                  cluster="staging" if core == "core3" else "prod")
    with pytest.raises(StoreError, match=r"different clusters \(core1, core2 of cluster 'prod'; core3 of cluster "
                                         r"'staging'\); nothing was changed"):
        restore_backup(sorted((tmp_path / "backup").iterdir()), tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_a_backup_restores_onto_a_new_disk_and_over_data_that_predates_recorded_clusters(tmp_path: Path) -> None:
    for core in sorted(CORES):
        node_data(tmp_path / "old" / core, core, CORES, A, AFTER, backup=tmp_path / "backup" / core)
    (tmp_path / "data").mkdir()
    restore_backup(sorted((tmp_path / "backup").iterdir()), tmp_path / "data", keep_replaced=False)
    db = Database(tmp_path / "data" / "core1")
    db.write([("meta", b"cluster", None)])  # as an older release left it
    db.flush_wal_synced()
    db.close()
    restored = restore_backup(sorted((tmp_path / "backup").iterdir()), tmp_path / "data", keep_replaced=False)
    assert sorted(restored.kept) == sorted(CORES)
    assert [k for k, _ in dump(tmp_path / "data" / "core1")["offline_msg"]] == [b"a"]


def test_a_data_directory_that_cannot_be_renamed_is_set_aside_inside_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mount point (a container's volume) cannot be renamed: the data goes into `.forgotten-TIME` inside it, and
    the node starts on the directory as an empty one, leaving that alone (also when set aside again later)."""
    data_dir = tmp_path / "core3"
    db = Database(data_dir)
    NodeMeta(db).claim("core3", "iris")
    db.write([("offline_msg", b"bob\x00m1", b"stale")])
    db.close()
    rename = Path.rename

    def busy_for_the_mount(self: Path, target: Any) -> Any:
        if self == data_dir:
            raise OSError(errno.EBUSY, "Device or resource busy")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", busy_for_the_mount)
    (data_dir / ".checkpoint-1-2").mkdir()  # a backup's staging directory, its node stopped under it
    first = set_aside(data_dir)
    assert first.parent == data_dir and first.name.startswith(".forgotten-") and (first / "CURRENT").is_file()
    assert not (first / ".checkpoint-1-2").exists()  # deleted, not moved: the backup thread may delete it too
    assert [entry.name for entry in data_dir.iterdir()] == [first.name]
    seed_directory(data_dir, incarnation=5, last_hlc=7)
    db = Database(data_dir)
    assert NodeMeta(db).claim("core3", "iris") is True and db.get("offline_msg", b"bob\x00m1") is None
    db.close()
    second = set_aside(data_dir)
    assert sorted(entry.name for entry in data_dir.iterdir()) == sorted([first.name, second.name])
    assert (first / "CURRENT").is_file() and (second / "CURRENT").is_file()
    monkeypatch.setattr(Path, "rename", rename)
    moved = set_aside(data_dir)  # renamable again: beside it, as usual
    assert moved.parent == tmp_path and moved.name.startswith("core3.forgotten-")


def test_the_data_a_core_keeps_aside_is_found_beside_and_inside_its_directory_and_only_its_own(tmp_path: Path) -> None:
    data_dir = tmp_path / "core1"
    assert kept_aside(data_dir) == []  # no directory yet
    for name in ("core1.replaced-20261101T000000Z", "core1.forgotten-20261102T000000Z-2",
                 "core1/.forgotten-20261103T000000Z", "core10.replaced-20261101T000000Z", "core1.restore-tmp",
                 ".core1.restore-x", "core1.forgotten-node"):  # the last: a node of that name, whose data it is
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "core1.replaced-20261104T000000Z").write_text("not a directory")
    beside = [tmp_path / "core1.forgotten-20261102T000000Z-2", tmp_path / "core1.replaced-20261101T000000Z"]
    assert kept_aside(data_dir) == sorted([tmp_path / "core1" / ".forgotten-20261103T000000Z", *beside])
    assert kept_aside(data_dir, inside=False) == beside  # the database directory is not listed


def test_a_database_still_open_is_not_set_aside(tmp_path: Path) -> None:
    db = Database(tmp_path / "core3")
    try:
        with pytest.raises(StoreError, match=r"core3 is open in this process; close it before setting it aside"):
            set_aside(tmp_path / "core3")
        assert [path.name for path in tmp_path.iterdir()] == ["core3"]
    finally:
        db.close()


def test_a_restore_shows_how_far_each_copy_got_while_it_takes_long(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("iris_mesh.store._backup._PROGRESS_EVERY_S", 0.0)  # as if each chunk took long: all shown
    pairs = two_cores_backed_up(tmp_path)
    lines: list[str] = []
    restore_all(pairs, progress=lines.append)
    for core in ("core1", "core2"):
        copied = [line for line in lines if line.startswith(f"  {core}: ")]
        assert copied and all(re.fullmatch(rf"  {core}: copied \d+\.\d of \d+\.\d MB \(\d+ %\)", line)
                              for line in copied), lines
        assert copied[-1].endswith("(100 %)")
    assert [k for k, _ in dump(tmp_path / "data" / "core2")["offline_msg"]] == [b"a"]


def test_a_checkpoint_that_cannot_be_read_whole_is_not_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory that cannot be listed, or a file that is no file, stops the restore: an empty or partial copy
    must never take the data's place."""
    pairs = two_cores_backed_up(tmp_path)
    before = {name: dump(tmp_path / "data" / name) for name in ("core1", "core2")}
    fifo = pairs[1][0] / "000099.log"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match=r"copying .*core2 next to .* failed .*not a regular file.*nothing was changed"):
        restore_all(pairs)
    fifo.unlink()
    scandir = os.scandir

    def unlistable(path: Any) -> Any:
        if isinstance(path, (str, os.PathLike)) and Path(path) == pairs[0][0]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", unlistable)
    with pytest.raises(StoreError, match=r"copying .*core1 next to .* failed .*Permission denied.*nothing was changed"):
        restore_all(pairs)
    monkeypatch.undo()
    assert {name: dump(tmp_path / "data" / name) for name in ("core1", "core2")} == before
