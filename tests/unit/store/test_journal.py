"""The node's local journal (iris_mesh.store.LocalJournal): records in its own database that outlive a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from iris_mesh.store import Database, LocalJournal

# Writes two records, deletes one and is SIGKILLed: no close, no fsync.
_KILLED = """
import os, signal, sys
from pathlib import Path
from iris_mesh.store import Database, LocalJournal
journal = LocalJournal(Database(Path(sys.argv[1])), "acked-deletes")
journal.put(b"bob\\x00one")
journal.put(b"bob\\x00two", b"v")
journal.delete(b"bob\\x00one")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_records_outlive_the_process_killed_and_names_keep_apart(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", _KILLED, str(tmp_path / "db")], capture_output=True, text=True,
                           timeout=60)
    assert child.returncode == -9, child.stderr
    db = Database(tmp_path / "db")
    try:
        assert LocalJournal(db, "acked-deletes").items() == [(b"bob\x00two", b"v")]
        assert LocalJournal(db, "acked").items() == []  # another name, though a prefix of that one
        assert list(db.iterate("offline_msg")) == []  # the node's tables are untouched
    finally:
        db.close()


def test_a_write_that_fails_is_counted_not_raised(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    journal = LocalJournal(db, "acked-deletes")
    db.close()
    journal.put(b"bob\x00one")  # the database is closed: RocksDB refuses
    journal.delete(b"bob\x00one")
    assert journal.failures == 2
