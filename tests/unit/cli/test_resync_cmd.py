"""`meshctl resync` shows how far the pass got with each peer while it waits (a core's answers faked)."""

from __future__ import annotations

import argparse
import threading
from typing import Any

import pytest

from iris_mesh.cli import _resync_cmd
from iris_mesh.cli._resync_cmd import cmd_resync, resync_progress

GOING = [{"peer": "core1", "step": "merging", "listed": 120_000, "pushed": 3, "pulled": 10, "running_s": 12.5},
         {"peer": "core2", "step": "digest", "listed": 0, "pushed": 0, "pulled": 0, "running_s": 12.5}]
DONE = {"ok": True, "pushed": 3, "pulled": 10, "peers": [
    {"peer": p, "code": "ok", "buckets": 4096, "listed": 120_000, "pushed": 3, "pulled": 10, "refused": 0,
     "duration_s": 20.0} for p in ("core1", "core2")]}


class SlowResync:
    """core3 answers `resync` only once it was asked for its status twice meanwhile."""

    def __init__(self) -> None:
        self.looked = 0
        self.twice = threading.Event()

    def endpoints(self) -> list[tuple[str, str]]:
        return [("core3", "tcp://127.0.0.1:7003")]

    def request(self, endpoint: str, op: str, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
        if op == "status":
            self.looked += 1
            if self.looked == 2:
                self.twice.set()
            return {"ok": True, "status": {"node_id": "core3", "resync": GOING}}
        assert (op, fields) == ("resync", {"node": "core3", "wait_s": 600.0})
        assert self.twice.wait(30)
        return DONE


def test_a_resync_shows_each_peers_progress_while_it_waits(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(_resync_cmd, "PROGRESS_EVERY_S", 0.01)
    args = argparse.Namespace(target_node="core3", node=None, wait=600.0, json=False, mdns_timeout=1.5)
    assert cmd_resync(SlowResync(), args) == 0  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert "core3 with core1: merging, 120,000 rows listed, pushed 3, pulled 10 (12.5 s)" in err
    assert "core3 with core2: digest, 0 rows listed, pushed 0, pulled 0 (12.5 s)" in err
    assert "core3 pushed 3 and pulled 10 keys" in out


def test_a_status_without_a_resync_or_with_odd_rows_shows_nothing_and_never_fails() -> None:
    assert resync_progress("core3", {"node_id": "core3"}) == []
    assert resync_progress("core3", None) == []
    assert resync_progress("core3", {"resync": ["x", {"peer": "core1", "step": "listing", "listed": "many"}]}) == [
        "core3 with core1: listing, 0 rows listed, pushed 0, pulled 0"]
