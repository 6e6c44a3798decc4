"""Backups: online RocksDB checkpoints, and an offline restore that swaps a data directory.

A checkpoint is a complete, openable database directory that reflects one point
of the database's history (every atomic batch is in it entirely or not at all).
It is made while the node runs; writes continue meanwhile.

Restore runs with the node stopped. It never deletes anything it has not first
replaced: the checkpoint is copied next to the data directory and opened once to
prove it is a usable iris_mesh database, then the old directory is renamed away,
the copy renamed in, and only then is the old one deleted. A crash in between
leaves either the old or the new directory in place (plus a hidden sibling that
can be removed by hand).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

from iris_mesh.store._db import Database, StoreError, held_by_this_process

__all__ = ["checkpoint", "restore"]


def checkpoint(db: Database, dest: Path) -> Path:
    """Write a consistent online checkpoint of `db` into `dest` (must not exist); returns `dest`."""
    if dest.exists():
        raise StoreError(f"backup destination {dest} already exists; choose a new directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        db.checkpoint(dest)
        _fsync_tree(dest)  # "backup done" means on disk, also after power loss
    except Exception as exc:
        raise StoreError(f"checkpoint into {dest} failed: {exc}") from None
    return dest


def restore(checkpoint_dir: Path, data_dir: Path) -> None:
    """Replace `data_dir` with a copy of `checkpoint_dir`. Offline only: refuses while a process holds the database."""
    checkpoint_dir, data_dir = checkpoint_dir.resolve(), data_dir.resolve()
    if not (checkpoint_dir / "CURRENT").is_file():
        raise StoreError(f"{checkpoint_dir} is not a database checkpoint (no CURRENT file); nothing was changed")
    if checkpoint_dir == data_dir or data_dir in checkpoint_dir.parents or checkpoint_dir in data_dir.parents:
        raise StoreError(f"the checkpoint {checkpoint_dir} and the data directory {data_dir} overlap; nothing was changed")
    if held_by_this_process(data_dir):
        raise StoreError(f"the database in {data_dir} is open in this process; close it before restoring")
    if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / "CURRENT").exists():
        raise StoreError(f"{data_dir} is not empty and is not a database; refusing to replace it")
    lock_fd = _lock_or_refuse(data_dir)
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", dir=data_dir.parent))
        try:
            staged = work / "data"
            shutil.copytree(checkpoint_dir, staged)
            _prove_usable(staged, checkpoint_dir)
            _fsync_tree(staged)
            _swap_in(staged, data_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def _lock_or_refuse(data_dir: Path) -> int | None:
    """Take the database's LOCK (RocksDB uses the same POSIX record lock) so no node opens it meanwhile."""
    lock_path = data_dir / "LOCK"
    if not lock_path.exists():
        return None
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(
            f"the database in {data_dir} is in use by another process (a running node?); stop it before restoring"
        ) from None
    return fd


def _prove_usable(staged: Path, source: Path) -> None:
    try:
        Database(staged).close()
    except StoreError as exc:
        raise StoreError(f"{source} is not a usable iris_mesh checkpoint: {exc}; nothing was changed") from None


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(staged: Path, data_dir: Path) -> None:
    old = data_dir.parent / f".{data_dir.name}.old-{os.getpid()}-{time.time_ns()}"
    had_old = data_dir.exists()
    if had_old:
        os.rename(data_dir, old)
    try:
        os.rename(staged, data_dir)
    except OSError:
        if had_old:
            os.rename(old, data_dir)  # put the original back; the restore did not happen
        raise
    _fsync_dir(data_dir.parent)
    if had_old:
        shutil.rmtree(old)
