"""Backups: an offline restore that swaps a data directory (the online checkpoints are `_checkpoint.py`'s).

A checkpoint is a complete, openable database directory that reflects one point
of the database's history (every atomic batch is in it entirely or not at all).
It is made while the node runs; writes continue meanwhile.

Restore runs with the nodes stopped, for all of a backup's cores or none. Each
checkpoint is copied next to its data directory and opened once to prove it is a
usable iris_mesh database; once every copy is, each old directory is renamed to
NODE.replaced-TIME beside it, and its copy renamed in. The replaced data stays there
until the operator deletes it (unless the restore was asked to delete it once every
copy is in), so a restore of the wrong backup can be undone. A crash during the
swaps leaves a `.NODE.restoring` mark beside each data directory, and no node opens
its database while its mark is there (`_restore_mark.py`): running the same restore
again does every swap again and deletes the marks and the copies left behind.

A backup is restored whole only if it holds every core: a core left with its own
data would hand what the backup lacks back to the restored cores once the cluster
runs (hints, anti-entropy), and the restore would be undone without a word. So
`restore_backup` refuses a backup that lacks a core the checkpoints expect or that
has a core's data directory beside the others, unless told to move that core's
data aside too, so that it starts empty and is refilled from the restored cores.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from rocksdict import AccessType, Options, Rdict

from iris_mesh.store._checkpoint import copied_text, copy_tree, fsync_dir, fsync_tree
from iris_mesh.store._db import (CHECKPOINT_STAGING_PREFIX, INSIDE_ASIDE_PREFIX, Database, StoreError,
                                 held_by_this_process)
from iris_mesh.store._meta import CLUSTER_KEY, EXPECTED_PREFIX, NODE_ID_KEY, RESTORED_KEY
from iris_mesh.store._restore_mark import read_marker, remove_markers, write_markers

__all__ = ["MissingCores", "Restored", "kept_aside", "restore", "restore_all", "restore_backup", "set_aside"]


def restore(checkpoint_dir: Path, data_dir: Path, *, keep_replaced: bool = True) -> Path | None:
    """Replace `data_dir` with a copy of `checkpoint_dir`. Offline only: refuses while a process holds the database.

    Returns where the replaced data was kept (None: there was none, or it was deleted).
    """
    return restore_all([(checkpoint_dir, data_dir)], keep_replaced=keep_replaced)[data_dir.resolve()]


class MissingCores(StoreError):
    """A restore refused before changing anything: the backup has no checkpoint of cores that would undo it."""

    def __init__(self, missing: dict[str, Path | None]) -> None:
        self.missing = dict(sorted(missing.items()))  # core -> its data directory beside the others (None: none there)
        named = ", ".join(f"{core} ({data_dir})" if data_dir else core for core, data_dir in self.missing.items())
        super().__init__(f"the backup has no checkpoint of {named}; nothing was changed")


class Restored(NamedTuple):
    """What `restore_backup` did, by core."""

    kept: dict[str, Path | None]  # each restored core -> where the data its checkpoint replaced is (None: none, or deleted)
    emptied: dict[str, Path | None]  # each core without a checkpoint whose data was moved aside -> where (None: deleted)
    # Cores without a checkpoint and without a data directory here: their data, if any, is elsewhere
    # (another data_dir, disk or host), where this restore cannot move it aside.
    elsewhere: tuple[str, ...]


def restore_backup(checkpoints: Sequence[Path], data_root: Path, progress: Callable[[str], None] = lambda _text: None,
                   *, keep_replaced: bool = True, without_missing: bool = False) -> Restored:
    """Put back a backup: each checkpoint (a directory named after its core) replaces data_root/CORE.

    The backup must hold every core: each core that a checkpoint's expected-core sets name,
    and each core whose data directory is in `data_root` (an edge's is not: edges hold no
    data, and theirs stay as they are). A core left out would keep its own data and hand it
    back to the restored cores once the cluster runs, undoing the restore; so MissingCores
    is raised before anything changes. With `without_missing`, the data directory of each
    such core is moved aside in the same all-or-nothing swap, like the replaced ones (or
    deleted with them), so that it starts empty and is refilled from the restored cores.
    """
    data_root = data_root.resolve()
    named = {checkpoint_dir.name: checkpoint_dir for checkpoint_dir in checkpoints}
    expected: set[str] = set()
    clusters: dict[str, list[str]] = {}
    for checkpoint_dir in named.values():
        if (checkpoint_dir / "CURRENT").is_file():  # without it restore_all refuses the checkpoint, naming why
            try:
                identity = _read_identity(checkpoint_dir)
            except StoreError as exc:
                raise StoreError(f"cannot tell which cores the checkpoint {checkpoint_dir} expects ({exc}); "
                                 "nothing was changed") from None
            expected |= identity.expected
            if identity.cluster is not None:
                clusters.setdefault(identity.cluster, []).append(checkpoint_dir.name)
    if len(clusters) > 1:
        mixed = "; ".join(f"{', '.join(cores)} of cluster {cluster!r}" for cluster, cores in sorted(clusters.items()))
        raise StoreError(f"the checkpoints are of different clusters ({mixed}); nothing was changed")
    # A core's directory that an unfinished restore emptied is empty but marked: this one moves it aside again,
    # which clears the mark (left alone, the mark would keep that core from starting for good).
    marked = {entry.name for entry in (data_root.iterdir() if data_root.is_dir() else ())
              if not entry.name.startswith(".") and read_marker(entry) is not None}
    missing = {core: data_root / core if _holds_anything(data_root / core) or core in marked else None
               for core in (expected | _cores_with_data(data_root, skip=set(named)) | marked) - set(named)}
    if missing and not without_missing:
        raise MissingCores(missing)
    pairs = [(checkpoint_dir, data_root / core) for core, checkpoint_dir in named.items()]
    aside = [data_dir for data_dir in missing.values() if data_dir is not None]
    moved = restore_all(pairs, progress, keep_replaced=keep_replaced, aside=aside)
    return Restored(kept={core: moved[(data_root / core).resolve()] for core in named},
                    emptied={core: moved[data_dir.resolve()] for core, data_dir in sorted(missing.items())
                             if data_dir is not None},
                    elsewhere=tuple(sorted(core for core, data_dir in missing.items() if data_dir is None)))


# While a restore copies a checkpoint, how often it tells how far it got (a large core takes minutes).
_PROGRESS_EVERY_S = 5.0


def _shown_every(every_s: float, name: str, progress: Callable[[str], None]) -> Callable[[int, int], None]:
    """A copy's progress callback that tells `progress` how far it got, at most once every `every_s`."""
    shown_at = time.monotonic()

    def copied(done: int, total: int) -> None:
        nonlocal shown_at
        now = time.monotonic()
        if total and now - shown_at >= every_s:
            shown_at = now
            progress(f"  {name}: copied {copied_text(done, total)}")

    return copied


def restore_all(pairs: Sequence[tuple[Path, Path]], progress: Callable[[str], None] = lambda _text: None, *,
                keep_replaced: bool = True, aside: Sequence[Path] = ()) -> dict[Path, Path | None]:
    """Replace each data directory with a copy of its checkpoint: all of them, or none if any is refused.

    Every checkpoint and data directory is checked, and every database locked, before anything
    changes; a refusal names every directory in the way. Each checkpoint is then copied next to
    its data directory and opened once, and only when every copy proved usable are the data
    directories swapped. The directories in `aside` are moved out of the way in the same swap
    (checked and locked like the others), leaving an empty one in their place (so a symbolic
    link to one still leads to a directory the node can start on). `progress` gets a line
    before each copy, and how far it got every _PROGRESS_EVERY_S while it goes on. Returns,
    for each data directory and each of `aside` (resolved), where its old data was kept:
    NODE.replaced-TIME beside it, or None if it had none or `keep_replaced` is False (then it
    is deleted once every copy is in).
    """
    pairs = [(checkpoint_dir.resolve(), data_dir.resolve()) for checkpoint_dir, data_dir in pairs]
    aside = [data_dir.resolve() for data_dir in aside]
    refusals = [text for text in (_refusal(c, d) for c, d in pairs) if text]
    refusals += [text for text in (_aside_refusal(d) for d in aside) if text]
    if refusals:
        raise StoreError("; ".join(refusals) + "; nothing was changed")
    locks: list[int] = []
    works: list[Path] = []
    try:
        busy = []
        for data_dir in [*(d for _c, d in pairs), *aside]:
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
        # A restore that did not finish (killed between its renames) left marks: this one does all of it again.
        unfinished = {d: found for d in [*(d for _c, d in pairs), *aside] if (found := read_marker(d)) is not None}
        for data_dir, found in unfinished.items():
            progress(f"a restore into {data_dir} did not finish (started {found.get('started', 'at an unknown time')}"
                     f"); this one replaces every directory again")
        when = _utc_stamp()
        marks: dict[Path, dict[str, Any]] = {}
        staged: list[tuple[Path | None, Path]] = []
        for checkpoint_dir, data_dir in pairs:
            progress(f"copying {checkpoint_dir} next to {data_dir} ...")
            try:
                data_dir.parent.mkdir(parents=True, exist_ok=True)
                work = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", dir=data_dir.parent))
                works.append(work)
                copy = work / "data"
                copy.mkdir()
                copy_tree(checkpoint_dir, copy, _shown_every(_PROGRESS_EVERY_S, data_dir.name, progress))
                fsync_tree(copy)
            except OSError as exc:
                raise StoreError(f"copying {checkpoint_dir} next to {data_dir} failed ({exc}); nothing was changed") from None
            _prove_usable(copy, checkpoint_dir, note={"from": str(checkpoint_dir), "at": when})
            staged.append((copy, data_dir))
            marks[data_dir] = {"started": when, "from": str(checkpoint_dir), "staged": str(work), "pid": os.getpid()}
        staged += [(None, data_dir) for data_dir in aside]
        marks.update({d: {"started": when, "from": None, "staged": None, "pid": os.getpid()} for d in aside})
        try:
            write_markers(marks)
        except OSError as exc:
            try:
                _unmark(list(marks), unfinished)
            except OSError:
                pass  # the error below names the cause; a mark left behind only stops a node until a restore runs
            raise StoreError(f"cannot mark the data directories as being restored ({exc}); nothing was changed") \
                from None
        moved = _swap_all(staged, keep_replaced, when, unfinished)
        _remove_leftovers(unfinished)
        return moved
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
    return _cluster_refusal(checkpoint_dir, data_dir)


def _cluster_refusal(checkpoint_dir: Path, data_dir: Path) -> str | None:
    """Why the data in `data_dir` is not to be replaced by another cluster's checkpoint (None: it may be).

    A side that cannot be read, or that was written before the cluster was recorded, does not refuse:
    the other checks (and the node at start, against its config) speak for it.
    """
    if not (data_dir / "CURRENT").is_file():
        return None
    try:
        restored, replaced = _read_identity(checkpoint_dir).cluster, _read_identity(data_dir).cluster
    except StoreError:
        return None
    if restored is None or replaced is None or restored == replaced:
        return None
    return (f"the checkpoint {checkpoint_dir} is of cluster {restored!r}, the data in {data_dir} of cluster "
            f"{replaced!r}: a restore puts back a backup of the same cluster")


def _aside_refusal(data_dir: Path) -> str | None:
    """Why `data_dir` may not be moved aside (None: it may, once the database is locked)."""
    if held_by_this_process(data_dir):
        return f"the database in {data_dir} is open in this process; close it before restoring"
    if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / "CURRENT").exists():
        return f"{data_dir} is not empty and is not a database; refusing to move it"
    return None


class _Identity(NamedTuple):
    node_id: str | None
    cluster: str | None  # None: written before the cluster was recorded
    expected: frozenset[str]  # the expected cores of every region in its meta table


# Files of a database directory that a read needs no link to: rocksdict rewrites its config file
# in the directory it opens, and the info log and lock belong to whoever has it open.
_NOT_LINKED = ("rocksdict-config.json", "LOCK", "LOG")


def _read_identity(db_dir: Path) -> _Identity:
    """The node id and expected cores recorded in the database in `db_dir`, which is left exactly as it is.

    Read through links in a temporary directory, with RocksDB's read-only open: the directory may
    be a backup on read-only media, or the data of a node that runs.
    """
    try:
        tmp = tempfile.TemporaryDirectory(prefix="iris-restore-read-")
    except OSError as exc:
        raise StoreError(f"cannot make a temporary directory to read {db_dir} ({exc.strerror or exc})") from None
    with tmp:
        view = Path(tmp.name)
        try:
            for entry in db_dir.iterdir():
                if entry.is_file() and not entry.name.startswith(_NOT_LINKED):
                    (view / entry.name).symlink_to(entry.absolute())
            options = Options(raw_mode=True)
            options.set_max_open_files(16)  # only the meta table is read: no need to open every table file
            tables = Rdict.list_cf(str(view), options)
            if "meta" not in tables:
                raise StoreError(f"{db_dir} is not an iris_mesh database (no meta table)")
            db = Rdict(str(view), options, column_families={name: Options(raw_mode=True) for name in tables},
                       access_type=AccessType.read_only())
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot read the database in {db_dir}: {exc}") from None
        try:
            meta = db.get_column_family("meta")
            node_id = meta.get(NODE_ID_KEY)
            cluster = meta.get(CLUSTER_KEY)
            expected: set[str] = set()
            for key, value in meta.items(from_key=EXPECTED_PREFIX):
                if not key.startswith(EXPECTED_PREFIX):
                    break
                expected.update(json.loads(value))
        except Exception as exc:
            raise StoreError(f"cannot read the database in {db_dir}: {exc}") from None
        finally:
            db.close()
    return _Identity(node_id.decode() if node_id is not None else None,
                     cluster.decode() if cluster is not None else None, frozenset(expected))


def _holds_anything(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _cores_with_data(data_root: Path, *, skip: set[str]) -> set[str]:
    """The cores (not edges) whose data directory is in `data_root`, but for those named in `skip`.

    A core's directory is named after it and its meta table lists it among the expected cores
    (a core always expects itself, an edge never); replaced data (NODE.replaced-TIME) belongs to
    another name. A database directory that cannot be read is refused (StoreError): it may be a core's.
    """
    found = set()
    unreadable = []
    for entry in sorted(data_root.iterdir()) if data_root.is_dir() else ():
        if entry.name in skip or entry.name.startswith(".") or not (entry / "CURRENT").is_file():
            continue
        try:
            identity = _read_identity(entry)
        except StoreError as exc:
            unreadable.append(f"{entry} ({exc})")
            continue
        if identity.node_id == entry.name and entry.name in identity.expected:
            found.add(entry.name)
    if unreadable:
        raise StoreError(f"cannot tell whether {', '.join(unreadable)} holds a core's data, which a restore must "
                         "replace or move aside: fix it, or move it out of the data root; nothing was changed")
    return found


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


def _prove_usable(staged: Path, source: Path, note: dict[str, str]) -> None:
    """Open the staged copy once, and note in it where it came from (the node logs that at its next start)."""
    try:
        db = Database(staged)
        try:
            db.put_synced("meta", RESTORED_KEY, json.dumps(note).encode())
        finally:
            db.close()
    except StoreError as exc:
        raise StoreError(f"{source} is not a usable iris_mesh checkpoint: {exc}; nothing was changed") from None


def _swap_all(staged: list[tuple[Path | None, Path]], keep_replaced: bool, when: str,
              unfinished: dict[Path, dict[str, Any]]) -> dict[Path, Path | None]:
    """Put every staged copy in place of its data directory: all of them, or none (the old ones are put back).

    Each old directory is renamed to NODE.replaced-TIME before its copy (if any: None leaves an
    empty directory in its place) is renamed in; with `keep_replaced` False the old ones are deleted once every copy
    is in place. Returns where each old one is. Every directory's restore mark is written already: it is
    deleted once every directory is in place, or every old one is back (but for the marks of an earlier restore
    that did not finish, `unfinished`, which are written back: what is back is its half-done state), and left
    (nodes do not start there) if neither could be made durable.
    """
    stamp = f"{os.getpid()}-{time.time_ns()}"
    data_dirs = [data_dir for _copy, data_dir in staged]
    done: list[tuple[Path, Path | None]] = []  # (data directory, where its old one went: None if it had none)
    try:
        for copy, data_dir in staged:
            old = _aside_name(data_dir, "replaced", when) if data_dir.exists() else None
            if old is not None:
                os.rename(data_dir, old)
            done.append((data_dir, old))  # from here on, an undo must bring the old one back
            if copy is not None:
                os.rename(copy, data_dir)
            else:
                data_dir.mkdir()  # moved aside: the node starts empty here
    except OSError as exc:
        stuck, said = _undo_swaps(done, stamp)
        try:
            _unmark([data_dir for data_dir in data_dirs if data_dir not in stuck], unfinished)  # stuck: marked
        except OSError as unmark:
            said += f" (but deleting the restore marks failed: {unmark}; delete .NODE.restoring beside each)"
        raise StoreError(f"putting the restored copies in place failed ({exc}); {said}") from None
    try:
        for parent in {data_dir.parent for data_dir, _old in done}:
            fsync_dir(parent)
        remove_markers(data_dirs)
    except OSError as exc:
        raise StoreError(f"the restored data is in place, but making that durable failed ({exc}); check the disk, "
                         "then run the same restore again: until then the nodes there do not start") from None
    if not keep_replaced:
        for _data_dir, old in done:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return {data_dir: None for data_dir, _old in done}
    return dict(done)


_STAMP_GLOB = "[0-9]" * 8 + "T" + "[0-9]" * 6 + "Z*"  # what _utc_stamp makes (and _free_name's -N after it)


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _aside_name(data_dir: Path, why: str, when: str) -> Path:
    """NODE.WHY-TIME beside `data_dir` (WHY: replaced, forgotten), with a number added if that name is taken."""
    return _free_name(data_dir.parent, f"{data_dir.name}.{why}-{when}")


def _free_name(parent: Path, stem: str) -> Path:
    """parent/STEM, or parent/STEM-N with the first N not taken (a second set-aside or restore in one second)."""
    for n in range(1, 1000):
        candidate = parent / (stem if n == 1 else f"{stem}-{n}")
        if not candidate.exists():
            return candidate
    raise OSError(errno.EEXIST, f"too many {stem}* directories in {parent}")


def kept_aside(data_dir: Path, *, inside: bool = True) -> list[Path]:
    """The data of this node that a restore replaced or a set-aside moved away, kept until the operator deletes it
    (NODE.replaced-TIME and NODE.forgotten-TIME beside `data_dir`, and with `inside` .forgotten-TIME in it, which
    lists the whole database directory): each takes as much disk as the data did. Absolute paths."""
    stem = glob.escape(data_dir.name)
    found = [path for why in ("replaced", "forgotten") for path in data_dir.parent.glob(f"{stem}.{why}-{_STAMP_GLOB}")]
    if inside and data_dir.is_dir():
        found += data_dir.glob(f"{INSIDE_ASIDE_PREFIX}{_STAMP_GLOB}")
    return sorted(path.resolve() for path in found if path.is_dir())


def set_aside(data_dir: Path) -> Path:
    """Set a closed database directory aside, durably: renamed NODE.forgotten-TIME beside it, or, where it cannot
    be renamed (a mount point, a parent the node may not write), its files moved into `.forgotten-TIME` inside it.
    Returns where the data went.

    The node starts on an empty directory at `data_dir` next; the data set aside is kept for the operator."""
    if held_by_this_process(data_dir):
        raise StoreError(f"the database in {data_dir} is open in this process; close it before setting it aside")
    when = _utc_stamp()
    dest = _aside_name(data_dir, "forgotten", when)
    try:
        data_dir.rename(dest)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM):
            raise
        return _aside_inside(data_dir, when)
    fsync_dir(data_dir.parent)
    return dest


def _aside_inside(data_dir: Path, when: str) -> Path:
    inside = _free_name(data_dir, f"{INSIDE_ASIDE_PREFIX}{when}")
    inside.mkdir()
    for entry in sorted(data_dir.iterdir()):
        if entry.name.startswith(CHECKPOINT_STAGING_PREFIX):  # a backup's, cut short by the stop: no data of its own
            shutil.rmtree(entry, ignore_errors=True)
        elif not entry.name.startswith(INSIDE_ASIDE_PREFIX):  # data set aside before stays where it is
            entry.rename(inside / entry.name)
    fsync_dir(inside)
    fsync_dir(data_dir)
    return inside


def _unmark(data_dirs: list[Path], unfinished: dict[Path, dict[str, Any]]) -> None:
    """Take this restore's marks off `data_dirs`: those an earlier, unfinished restore had marked get its mark back."""
    remove_markers([data_dir for data_dir in data_dirs if data_dir not in unfinished])
    write_markers({data_dir: unfinished[data_dir] for data_dir in data_dirs if data_dir in unfinished})


def _remove_leftovers(unfinished: dict[Path, dict[str, Any]]) -> None:
    """Delete the staged copies an unfinished restore left beside the data directories (only such copies)."""
    for data_dir, found in unfinished.items():
        staged = found.get("staged")
        if not isinstance(staged, str):
            continue
        path = Path(staged)
        if path.parent == data_dir.parent and path.name.startswith(f".{data_dir.name}.restore-"):
            shutil.rmtree(path, ignore_errors=True)


def _undo_swaps(done: list[tuple[Path, Path | None]], stamp: str) -> tuple[set[Path], str]:
    """Put the old data directories back after a failed swap; those that could not be, and what the operator finds."""
    stuck = []
    stuck_dirs: set[Path] = set()
    for data_dir, old in reversed(done):
        aside = data_dir.parent / f".{data_dir.name}.undone-{stamp}"
        try:
            if data_dir.exists():
                os.rename(data_dir, aside)  # the restored copy: out of the way first, deleted last
            if old is not None:
                os.rename(old, data_dir)
        except OSError as exc:
            stuck.append(f"{data_dir} ({exc}; its old data is in {old})")
            stuck_dirs.add(data_dir)
            continue
        shutil.rmtree(aside, ignore_errors=True)
    if stuck:
        return stuck_dirs, ("could not put back the old data of " + ", ".join(stuck) + ": move it back by hand, "
                            "then delete the .NODE.restoring mark beside it, before starting")
    return stuck_dirs, "every data directory is as it was"
