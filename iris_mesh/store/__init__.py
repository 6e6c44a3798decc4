"""Storage: the only package that imports rocksdict."""

from __future__ import annotations

from iris_mesh.store._admin import StoreAdmin
from iris_mesh.store._backup import (
    MissingCores,
    Restored,
    kept_aside,
    restore,
    restore_all,
    restore_backup,
    set_aside,
)
from iris_mesh.store._checkpoint import PARTIAL_SUFFIX, Checkpointed, checkpoint, copied_text
from iris_mesh.store._coordinator import DURABILITIES, Done, QuorumCoordinator
from iris_mesh.store._db import TABLES, Database, StoreError
from iris_mesh.store._journal import LocalJournal
from iris_mesh.store._local import LocalStore
from iris_mesh.store._keys import compose, partition_key
from iris_mesh.store._meta import CLOCK_SAVE_INTERVAL_S, ClockKeeper, NodeMeta, seed_directory
from iris_mesh.store._scan import QuorumScanner, ScanDone
from iris_mesh.store._service import USER_TABLES, StoreService
from iris_mesh.store._versioned import HybridClock, Version, Versioned

__all__ = [
    "CLOCK_SAVE_INTERVAL_S",
    "Checkpointed",
    "ClockKeeper",
    "DURABILITIES",
    "Database",
    "Done",
    "HybridClock",
    "LocalJournal",
    "LocalStore",
    "MissingCores",
    "NodeMeta",
    "PARTIAL_SUFFIX",
    "QuorumCoordinator",
    "Restored",
    "StoreAdmin",
    "StoreError",
    "StoreService",
    "TABLES",
    "USER_TABLES",
    "copied_text",
    "Version",
    "Versioned",
    "QuorumScanner",
    "ScanDone",
    "checkpoint",
    "compose",
    "kept_aside",
    "partition_key",
    "restore",
    "restore_all",
    "restore_backup",
    "seed_directory",
    "set_aside",
]
