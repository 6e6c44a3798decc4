"""Online checkpoints (`meshctl backup`) that leave the node serving while they are taken.

RocksDB's checkpoint call holds the interpreter lock from start to end, so
every thread of the node waits while it runs: while it flushes the memtables
(a full 64 MB one took ~0.3 s) and, when the destination is on another
filesystem, while it copies every table file (seconds to minutes for a large
core: long enough for the other nodes to count it dead). So a checkpoint is
taken in three steps, each of which leaves the lock free for all but moments:

1. the memtables are flushed by RocksDB's own threads, waited for by polling;
2. RocksDB checkpoints into a directory inside the data directory
   (`CHECKPOINT_STAGING_PREFIX`): the same filesystem, so it hard-links the
   table files and copies only the small rest (what the memtables got since);
3. that directory is renamed to the destination, or, on another filesystem,
   copied there file by file by this module (the copy and its fsyncs run
   with the lock released) and then deleted.

A node that stops meanwhile sets `stopping`: the checkpoint is given up
between two steps or two chunks of the copy, and what it made is deleted.

A checkpoint renamed into place shares its table files with the live data
(hard links): it costs no disk space at first, and is lost with that disk.
A staging directory a crash left behind is deleted at the next open.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from iris_mesh.store._db import CHECKPOINT_STAGING_PREFIX, Database, StoreError

__all__ = ["PARTIAL_SUFFIX", "BackupError", "Checkpointed", "checkpoint", "copied_text", "copy_tree", "fsync_dir",
           "fsync_tree"]

# How long the memtable flush may take before the checkpoint goes ahead and RocksDB flushes the rest itself.
_FLUSH_WAIT_S = 60.0
PARTIAL_SUFFIX = ".partial"  # a copy onto another filesystem, until it is whole and synced
_COPY_CHUNK = 4 << 20  # a copy looks at `stopping` and tells its progress after each chunk


class BackupError(StoreError):
    """A checkpoint was not taken; `cause` says why, for the advice meshctl gives.

    `exists`: the destination is there already (an earlier backup's); `create`: its directory cannot
    be made; `checkpoint`: RocksDB or the disk failed while writing it; `stopping`: the node is stopping.
    """

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


class Checkpointed(NamedTuple):
    """Where a checkpoint is, and whether it shares the data's disk (hard-linked table files) or was copied."""

    path: Path
    linked: bool


def checkpoint(db: Database, dest: Path, progress: Callable[[int, int], None] | None = None,
               stopping: threading.Event | None = None) -> Checkpointed:
    """Write a consistent online checkpoint of `db` into `dest` (must not exist). BackupError if not.

    Runs off the engine thread; writes go on meanwhile. Every file of the checkpoint is fsync'd before it returns.
    A copy onto another filesystem calls `progress(bytes copied, bytes to copy)` first and after each chunk.
    Once `stopping` is set it gives up at the next step or chunk (BackupError "stopping"), leaving nothing.
    """
    stopping = stopping or threading.Event()

    def go_on() -> None:
        if stopping.is_set():
            raise BackupError("stopping", f"the node is stopping: the checkpoint into {dest} was given up "
                                          "(nothing of it kept)")

    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    for path in (dest, partial):
        if path.exists():
            raise BackupError("exists", f"backup destination {path} already exists; choose a new directory")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError("create", f"cannot create the directory {dest.parent}: {exc.strerror or exc}") from None
    stage = db.path / f"{CHECKPOINT_STAGING_PREFIX}{os.getpid()}-{time.time_ns()}"
    made: Path | None = None  # what this call put in the backup directory: deleted if the checkpoint fails
    copied = False
    try:
        go_on()
        db.flush_memtables(_FLUSH_WAIT_S, stopping)
        go_on()
        db.checkpoint(stage)
        go_on()
        fsync_tree(stage)  # "backup done" means on disk, also after power loss
        try:
            os.rename(stage, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            partial.mkdir()  # FileExistsError: another backup of this core into the same directory, going on now
            made, copied = partial, True
            copy_tree(stage, partial, progress or (lambda _done, _total: None), go_on)
            fsync_tree(partial, go_on)
            os.rename(partial, dest)
        made = dest
        fsync_dir(dest.parent)
    except Exception as exc:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(exc, BackupError):
            raise
        raise BackupError("checkpoint", f"checkpoint into {dest} failed: {exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Checkpointed(dest, linked=not copied)


def copied_text(done: int, total: int) -> str:
    """How far a copy got, for an operator: '3.2 of 10.5 GB (30 %)' (MB below a GB); `total` > 0."""
    scale, unit = (1e9, "GB") if total >= 1e9 else (1e6, "MB")
    return f"{done / scale:.1f} of {total / scale:.1f} {unit} ({100 * done // total} %)"


def copy_tree(source: Path, dest: Path, progress: Callable[[int, int], None],
              go_on: Callable[[], None] = lambda: None) -> None:
    """Copy every file under `source` into the directory `dest` (its subdirectories made as in `source`, links
    followed), a chunk at a time with the interpreter lock free: `progress(bytes copied, bytes to copy)` first and
    after each chunk, `go_on()` before each chunk (it may raise to give up). The copies get this process's default
    modes. OSError for a directory that cannot be listed or anything but regular files and directories."""
    def unlisted(exc: OSError) -> None:
        raise exc

    files: list[tuple[Path, Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(source, onerror=unlisted, followlinks=True):
        into = dest / Path(dirpath).relative_to(source)
        for name in dirnames:
            (into / name).mkdir()
        for name in sorted(filenames):
            info = os.stat(Path(dirpath) / name)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file (a checkpoint holds only files)",
                              str(Path(dirpath) / name))
            files.append((Path(dirpath) / name, into / name, info.st_size))
    total = sum(size for _src, _dst, size in files)
    done = 0
    progress(done, total)
    for src, dst, _size in files:
        for copied in _copy_file(src, dst, go_on):
            done += copied
            progress(done, total)


def _copy_file(source: Path, dest: Path, go_on: Callable[[], None]) -> Iterator[int]:
    """Copy one file a chunk at a time (reads and writes release the interpreter lock); yields each chunk's size."""
    buffer = bytearray(_COPY_CHUNK)
    with open(source, "rb", buffering=0) as src, open(dest, "xb", buffering=0) as dst:
        while True:
            go_on()
            size = src.readinto(buffer)
            if not size:
                return
            view = memoryview(buffer)[:size]
            while view:
                view = view[dst.write(view):]
            yield size


def fsync_tree(root: Path, go_on: Callable[[], None] = lambda: None) -> None:
    """Fsync every file and directory under `root`, calling `go_on` before each file (it may raise to give up)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            go_on()
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    """Fsync a directory: the names in it (a rename, a new file) survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
