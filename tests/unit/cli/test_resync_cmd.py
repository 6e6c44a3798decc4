"""`meshctl resync` shows how far the pass got with each peer while it waits (a core's answers faked)."""

from __future__ import annotations

import argparse
import threading
from typing import Any

import pytest

from iris_mesh.cli import _resync_cmd
from iris_mesh.cli._resync_cmd import cmd_resync, resync_progress
from iris_mesh.sockets import cluster_keys
from support.admin_endpoint import admin_endpoint

KEYS = cluster_keys(b"resync-test-cookie")

GOING = [{"peer": "core1", "step": "merging", "listed": 120_000, "pushed": 3, "pulled": 10, "running_s": 12.5},
         {"peer": "core2", "step": "digest", "listed": 0, "pushed": 0, "pulled": 0, "running_s": 12.5}]
DONE = {"ok": True, "pushed": 3, "pulled": 10, "peers": [
    {"peer": p, "code": "ok", "buckets": 4096, "listed": 120_000, "pushed": 3, "pulled": 10, "refused": 0,
     "duration_s": 20.0} for p in ("core1", "core2")]}


class Core3:
    """Answers `status` with a pass going on; counts the looks."""

    def __init__(self) -> None:
        self.looked = 0
        self.twice = threading.Event()

    def answer(self, request: Any) -> None:
        self.looked += 1
        if self.looked == 2:
            self.twice.set()
        request.reply({"ok": True, "status": {"node_id": "core3", "resync": GOING}})


class SlowResync:
    """meshctl's view of core3, which answers `resync` only once it was asked for its status twice meanwhile."""

    def __init__(self, core3: Core3, endpoint: str) -> None:
        self.core3, self.endpoint, self.keys = core3, endpoint, KEYS

    def endpoints(self) -> list[tuple[str, str]]:
        return [("core3", self.endpoint)]

    def request(self, endpoint: str, op: str, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
        assert (endpoint, op, fields) == (self.endpoint, "resync", {"node": "core3", "wait_s": 600.0})
        assert self.core3.twice.wait(30)
        return DONE


def test_a_resync_shows_each_peers_progress_while_it_waits(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(_resync_cmd, "PROGRESS_EVERY_S", 0.01)
    core3 = Core3()
    args = argparse.Namespace(target_node="core3", node=None, wait=600.0, json=False, mdns_timeout=1.5)
    with admin_endpoint(KEYS, core3.answer, "core3") as endpoint:
        assert cmd_resync(SlowResync(core3, endpoint), args) == 0  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert "core3 with core1: comparing rows, 120,000 rows listed, pushed 3, pulled 10 (12.5 s)" in err
    assert "core3 with core2: comparing digests, 0 rows listed, pushed 0, pulled 0 (12.5 s)" in err
    assert "core3 pushed 3 and pulled 10 keys" in out


def test_a_status_without_a_resync_or_with_odd_rows_shows_nothing_and_never_fails() -> None:
    assert resync_progress("core3", {"node_id": "core3"}) == []
    assert resync_progress("core3", None) == []
    assert resync_progress("core3", {"resync": ["x", {"peer": "core1", "step": "listing", "listed": "many"}]}) == [
        "core3 with core1: listing rows, 0 rows listed, pushed 0, pulled 0"]
