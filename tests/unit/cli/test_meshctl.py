"""meshctl's RocksDB line: the throttling states an operator acts on, which a test cluster does not reach."""

from __future__ import annotations

import pytest

from iris_mesh.cli.meshctl import _engine_text
from iris_mesh.store._db import ENGINE_PROPERTIES

MB = 2**20


def state(**fields: int) -> dict[str, int]:
    """An engine_state reply: every property Database.engine_state reports, zero unless given."""
    out = {field: 0 for field, _, _ in ENGINE_PROPERTIES}
    assert set(fields) <= set(out), f"not an engine_state field: {set(fields) - set(out)}"
    out.update(fields)
    return out


def test_an_idle_engine_reads_as_not_throttled() -> None:
    line = _engine_text(state(memtable_bytes=3 * MB // 2))
    assert line == ("memtables 1.5 MB, level-0 files 0, to compact 0.0 MB, flushes running 0, "
                    "compactions running 0; writes not throttled")


def test_a_delayed_write_rate_reads_as_slowed_with_the_rate_and_the_cause() -> None:
    line = _engine_text(state(delayed_write_rate=16 * MB, l0_files=21, pending_compaction_bytes=700 * MB,
                              compactions_running=1))
    assert "level-0 files 21" in line and "to compact 700.0 MB" in line and "compactions running 1" in line
    assert line.endswith("writes SLOWED to 16.0 MB/s (flushes or compactions are behind)")


@pytest.mark.parametrize("delayed", [0, 16 * MB])
def test_stopped_writes_win_over_a_delayed_rate(delayed: int) -> None:
    line = _engine_text(state(writes_stopped=1, delayed_write_rate=delayed, flushes_running=1))
    assert line.endswith("WRITES STOPPED (memtables waiting to flush or too many level-0 files)")
    assert "SLOWED" not in line
