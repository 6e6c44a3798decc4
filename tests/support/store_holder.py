"""A second process that keeps a node's database open, for tests of what refuses a database in use."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

_HOLD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from iris_mesh.store._db import Database
    db = Database(Path(sys.argv[1]))
    print("open", flush=True)
    sys.stdin.read()
    db.close()
    """
)


@contextlib.contextmanager
def held_by_another_process(path: Path) -> Iterator[None]:
    """While inside, another process has the database at `path` open; it closes it cleanly on exit."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(30) == 0
