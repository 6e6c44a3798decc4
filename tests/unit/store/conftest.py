"""Fixtures of the LocalStore tests (test_local.py, test_commit.py): a store on a real database, plain, gated or
failing on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from _local_harness import Engine, FailingDatabase, GatedDatabase, open_store
from iris_mesh.store._db import Database
from iris_mesh.store._local import LocalStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[LocalStore, Engine]]:
    db = Database(tmp_path / "db")
    store, engine = open_store(db)
    yield store, engine
    store.close()
    db.close()


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[LocalStore, Engine, GatedDatabase]]:
    db = GatedDatabase(tmp_path / "db")
    store, engine = open_store(db)
    yield store, engine, db
    db.gate.set()
    store.close()
    db.close()


@pytest.fixture
def failing(tmp_path: Path) -> Iterator[tuple[LocalStore, Engine, FailingDatabase]]:
    db = FailingDatabase(tmp_path / "db")
    store, engine = open_store(db)
    yield store, engine, db
    store.close()
    db.close()
