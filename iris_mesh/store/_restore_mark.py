"""The mark of a restore under way: a file beside each data directory it is about to replace.

A restore swaps every core's data directory by renaming (`_backup.py`). A crash in
the middle leaves some cores restored, some with their own data, and one perhaps
with no directory at all (its data gone aside, its copy not yet in): a node started
then would run on a mix, and the cores with their own data would hand it back to
the restored ones. So the restore writes `.NODE.restoring` beside each directory
before the first rename and deletes them after the last; a database whose mark is
there does not open (`refuse_if_restoring`), and running the same restore again
finishes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["marker_path", "read_marker", "refuse_if_restoring", "remove_markers", "write_markers"]


def marker_path(data_dir: Path) -> Path:
    return data_dir.parent / f".{data_dir.name}.restoring"


def read_marker(data_dir: Path) -> dict[str, Any] | None:
    """What the mark beside `data_dir` says (None: there is none); a mark that cannot be read says nothing more."""
    path = marker_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return {} if os.path.lexists(path) else None  # there, and unreadable: a mark all the same
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def refuse_if_restoring(data_dir: Path) -> str | None:
    """Why the database in `data_dir` must not open (None: no restore into it is unfinished)."""
    for candidate in dict.fromkeys((data_dir.absolute(), data_dir.resolve())):
        found = read_marker(candidate)
        if found is None:
            continue
        started = found.get("started", "at an unknown time")
        source = found.get("from")
        what = f" from {source}" if isinstance(source, str) else \
            ", moving this directory aside to start empty" if "from" in found else ""
        return (
            f"a restore into {candidate} did not finish (started {started}{what}); the cluster's cores may hold a "
            f"mix of restored and older data. Run the same `meshctl restore` again to finish it (the data it "
            f"replaces is kept as {candidate.name}.replaced-TIME), or, to keep what {candidate} holds now, delete "
            f"{marker_path(candidate)}"
        )
    return None


def write_markers(marks: dict[Path, dict[str, Any]]) -> None:
    """Write each data directory's mark and make it durable, before anything of the restore changes."""
    for data_dir, fields in marks.items():
        path = marker_path(data_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, json.dumps(fields).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dirs(marks)


def remove_markers(data_dirs: list[Path]) -> None:
    """Delete the marks once every directory is in place (and durably so)."""
    for data_dir in data_dirs:
        try:
            marker_path(data_dir).unlink()
        except FileNotFoundError:
            pass
    _fsync_dirs(data_dirs)


def _fsync_dirs(data_dirs: Any) -> None:
    for parent in {data_dir.parent for data_dir in data_dirs}:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
