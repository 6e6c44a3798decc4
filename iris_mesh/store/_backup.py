"""Backups: online RocksDB checkpoints, and an offline restore that swaps a data directory.

A checkpoint is a complete, openable database directory that reflects one point
of the database's history (every atomic batch is in it entirely or not at all).
It is made while the node runs; writes continue meanwhile.

Restore runs with the nodes stopped, for all of a backup's cores or none. Each
checkpoint is copied next to its data directory and opened once to prove it is a
usable iris_mesh database; once every copy is, each old directory is renamed to
NODE.replaced-TIME beside it, and its copy renamed in. The replaced data stays there
until the operator deletes it (unless the restore was asked to delete it once every
copy is in), so a restore of the wrong backup can be undone. A crash during the
swaps can leave a core with its old data in NODE.replaced-TIME and its copy still
in a hidden `.NODE.restore-*` sibling: move one of them back before starting it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from iris_mesh.store._db import Database, StoreError, held_by_this_process

__all__ = ["checkpoint", "restore", "restore_all"]


def checkpoint(db: Database, dest: Path) -> Path:
    """Write a consistent online checkpoint of `db` into `dest` (must not exist); returns `dest`."""
    if dest.exists():
        raise StoreError(f"backup destination {dest} already exists; choose a new directory")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the directory {dest.parent}: {exc.strerror or exc}") from None
    try:
        db.checkpoint(dest)
        _fsync_tree(dest)  # "backup done" means on disk, also after power loss
    except Exception as exc:
        raise StoreError(f"checkpoint into {dest} failed: {exc}") from None
    return dest


def restore(checkpoint_dir: Path, data_dir: Path, *, keep_replaced: bool = True) -> Path | None:
    """Replace `data_dir` with a copy of `checkpoint_dir`. Offline only: refuses while a process holds the database.

    Returns where the replaced data was kept (None: there was none, or it was deleted).
    """
    return restore_all([(checkpoint_dir, data_dir)], keep_replaced=keep_replaced)[data_dir.resolve()]


def restore_all(pairs: Sequence[tuple[Path, Path]], progress: Callable[[str], None] = lambda _text: None, *,
                keep_replaced: bool = True) -> dict[Path, Path | None]:
    """Replace each data directory with a copy of its checkpoint: all of them, or none if any is refused.

    Every checkpoint and data directory is checked, and every database locked, before anything
    changes; a refusal names every directory in the way. Each checkpoint is then copied next to
    its data directory and opened once, and only when every copy proved usable are the data
    directories swapped. `progress` gets a line before each copy. Returns, for each data
    directory (resolved), where its replaced data was kept: NODE.replaced-TIME beside it, or
    None if it had none or `keep_replaced` is False (then it is deleted once every copy is in).
    """
    pairs = [(checkpoint_dir.resolve(), data_dir.resolve()) for checkpoint_dir, data_dir in pairs]
    refusals = [text for text in (_refusal(c, d) for c, d in pairs) if text]
    if refusals:
        raise StoreError("; ".join(refusals) + "; nothing was changed")
    locks: list[int] = []
    works: list[Path] = []
    try:
        busy = []
        for _checkpoint_dir, data_dir in pairs:
            fd = _lock(data_dir)
            if fd == _BUSY:
                busy.append(str(data_dir))
            elif fd is not None:
                locks.append(fd)
        if busy:
            raise StoreError(
                f"the database in {', '.join(busy)} is in use by another process (a running node?); "
                "stop it before restoring; nothing was changed"
            )
        staged = []
        for checkpoint_dir, data_dir in pairs:
            progress(f"copying {checkpoint_dir} next to {data_dir} ...")
            try:
                data_dir.parent.mkdir(parents=True, exist_ok=True)
                work = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", dir=data_dir.parent))
                works.append(work)
                copy = work / "data"
                shutil.copytree(checkpoint_dir, copy)
                _fsync_tree(copy)
            except OSError as exc:
                raise StoreError(f"copying {checkpoint_dir} next to {data_dir} failed ({exc}); nothing was changed") from None
            _prove_usable(copy, checkpoint_dir)
            staged.append((copy, data_dir))
        return _swap_all(staged, keep_replaced)
    finally:
        for work in works:
            shutil.rmtree(work, ignore_errors=True)
        for fd in locks:
            os.close(fd)


def _refusal(checkpoint_dir: Path, data_dir: Path) -> str | None:
    """Why `checkpoint_dir` may not replace `data_dir` (None: it may, once the database is locked)."""
    if not (checkpoint_dir / "CURRENT").is_file():
        return f"{checkpoint_dir} is not a database checkpoint (no CURRENT file)"
    if checkpoint_dir == data_dir or data_dir in checkpoint_dir.parents or checkpoint_dir in data_dir.parents:
        return f"the checkpoint {checkpoint_dir} and the data directory {data_dir} overlap"
    if held_by_this_process(data_dir):
        return f"the database in {data_dir} is open in this process; close it before restoring"
    if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / "CURRENT").exists():
        return f"{data_dir} is not empty and is not a database; refusing to replace it"
    return None


_BUSY = -1


def _lock(data_dir: Path) -> int | None:
    """Take the database's LOCK (RocksDB uses the same POSIX record lock) so no node opens it meanwhile.

    The descriptor holding it; None if there is no database yet; _BUSY if another process holds it.
    """
    lock_path = data_dir / "LOCK"
    if not lock_path.exists():
        return None
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError as exc:
        raise StoreError(f"cannot open {lock_path} ({exc}); nothing was changed") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return _BUSY
        raise StoreError(f"cannot lock {lock_path} ({exc}); nothing was changed") from None
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


def _swap_all(staged: list[tuple[Path, Path]], keep_replaced: bool) -> dict[Path, Path | None]:
    """Put every staged copy in place of its data directory: all of them, or none (the old ones are put back).

    Each old directory is renamed to NODE.replaced-TIME before its copy is renamed in; with `keep_replaced`
    False the old ones are deleted once every copy is in place. Returns where each old one is.
    """
    stamp = f"{os.getpid()}-{time.time_ns()}"
    when = _utc_stamp()
    done: list[tuple[Path, Path | None]] = []  # (data directory, where its old one went: None if it had none)
    try:
        for copy, data_dir in staged:
            old = _replaced_name(data_dir, when) if data_dir.exists() else None
            if old is not None:
                os.rename(data_dir, old)
            done.append((data_dir, old))  # from here on, an undo must bring the old one back
            os.rename(copy, data_dir)
    except OSError as exc:
        raise StoreError(f"putting the restored copies in place failed ({exc}); {_undo_swaps(done, stamp)}") from None
    try:
        for parent in {data_dir.parent for data_dir, _old in done}:
            _fsync_dir(parent)
    except OSError as exc:
        raise StoreError(f"the restored data is in place, but syncing its directory failed ({exc}); "
                         "check the disk before starting the cluster") from None
    if not keep_replaced:
        for _data_dir, old in done:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return {data_dir: None for data_dir, _old in done}
    return dict(done)


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _replaced_name(data_dir: Path, when: str) -> Path:
    """NODE.replaced-TIME beside `data_dir`, with a number added if a restore in the same second took that name."""
    for n in range(1, 1000):
        candidate = data_dir.parent / f"{data_dir.name}.replaced-{when}" if n == 1 else \
            data_dir.parent / f"{data_dir.name}.replaced-{when}-{n}"
        if not candidate.exists():
            return candidate
    raise OSError(errno.EEXIST, f"too many {data_dir.name}.replaced-{when}* directories in {data_dir.parent}")


def _undo_swaps(done: list[tuple[Path, Path | None]], stamp: str) -> str:
    """Put the old data directories back after a failed swap; says what the operator finds."""
    stuck = []
    for data_dir, old in reversed(done):
        aside = data_dir.parent / f".{data_dir.name}.undone-{stamp}"
        try:
            if data_dir.exists():
                os.rename(data_dir, aside)  # the restored copy: out of the way first, deleted last
            if old is not None:
                os.rename(old, data_dir)
        except OSError as exc:
            stuck.append(f"{data_dir} ({exc}; its old data is in {old})")
            continue
        shutil.rmtree(aside, ignore_errors=True)
    if stuck:
        return "could not put back the old data of " + ", ".join(stuck) + ": move it back by hand before starting"
    return "every data directory is as it was"
