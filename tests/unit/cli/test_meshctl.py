"""meshctl: the RocksDB line (throttling states a test cluster does not reach), uptimes, sizes, bad arguments, errors,
what backup says of a node's failure, and restore of a backup that lacks a core (real databases in tmp_path)."""

from __future__ import annotations

import argparse
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from iris_mesh.cli import _backup_cmds
from iris_mesh.cli._backup_cmds import _backup_advice, _backup_showing_copies, _cause_in_words, copy_progress
from iris_mesh.cli._target import EXIT_CHECK_FAILED, CtlError
from iris_mesh.cli.meshctl import (
    _duration_text,
    _engine_text,
    _heartbeat_text,
    _mib_text,
    _parser,
    cmd_delete,
    cmd_get,
    cmd_ping,
    cmd_put,
    cmd_resync,
    main,
)
from iris_mesh.sockets import AdminError, cluster_keys
from support.admin_endpoint import admin_endpoint
from iris_mesh.store import Database, NodeMeta, checkpoint
from iris_mesh.store._db import ENGINE_FIELDS

MB = 2**20


def state(**fields: int) -> dict[str, int]:
    """An engine_state reply: every property Database.engine_state reports, zero unless given."""
    out = dict.fromkeys(ENGINE_FIELDS, 0)
    assert set(fields) <= set(out), f"not an engine_state field: {set(fields) - set(out)}"
    out.update(fields)
    return out


def test_an_idle_engine_reads_as_not_throttled() -> None:
    line = _engine_text(state(memtable_bytes=3 * MB // 2, wal_bytes=40 * MB, table_file_bytes=650 * MB))
    assert line == ("memtables 1.5 MiB, WAL 40 MiB, table files 650 MiB, level-0 files 0, to compact 0.0 MiB, "
                    "flushes running 0, compactions running 0; writes not throttled")


def test_disk_sizes_a_node_does_not_report_read_as_dashes() -> None:
    older = state()
    del older["wal_bytes"], older["table_file_bytes"]
    assert _engine_text(older).startswith("memtables 0.0 MiB, WAL -, table files -, level-0 files 0,")


def test_a_delayed_write_rate_reads_as_slowed_with_the_rate_and_the_cause() -> None:
    line = _engine_text(state(delayed_write_rate=16 * MB, l0_files=21, pending_compaction_bytes=700 * MB,
                              compactions_running=1))
    assert "level-0 files 21" in line and "to compact 700.0 MiB" in line and "compactions running 1" in line
    assert line.endswith("writes SLOWED to 16.0 MiB/s (flushes or compactions are behind)")


@pytest.mark.parametrize("delayed", [0, 16 * MB])
def test_stopped_writes_win_over_a_delayed_rate(delayed: int) -> None:
    line = _engine_text(state(writes_stopped=1, delayed_write_rate=delayed, flushes_running=1))
    assert line.endswith("WRITES STOPPED (memtables waiting to flush or too many level-0 files)")
    assert "SLOWED" not in line


@pytest.mark.parametrize(("seconds", "text"), [
    (0.4, "0s"), (59.9, "59s"), (60, "1m00s"), (425, "7m05s"), (3599, "59m59s"),
    (3600, "1h00m"), (11_520, "3h12m"), (86_400, "1d00h"), (183_600, "2d03h"),
])
def test_an_uptime_reads_in_its_two_largest_units(seconds: float, text: str) -> None:
    assert _duration_text(seconds) == text


def test_a_size_reads_in_mib_and_an_unknown_one_as_a_dash() -> None:
    assert _mib_text(52 * MB + MB // 3) == "52 MiB"
    assert _mib_text(None) == "-"


@pytest.mark.parametrize("argv", [["--timeout", "-1", "nodes"], ["--mdns-timeout", "0", "status"],
                                  ["mesh", "--expect", "0"], ["mesh", "--wait", "soon"]])
def test_a_timeout_or_count_that_is_not_above_zero_is_a_usage_error(argv: list[str],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and ("must be above zero" in err or "is not a number" in err), err


@pytest.mark.parametrize(("argv", "says"), [
    (["token", "bad user"], "'bad user' is not a user name"),
    (["token", "alice", "--ttl", "0"], "must be above zero"),
    (["token", "alice", "--ttl", "inf"], "must be above zero and at most 1,000,000,000, got inf"),
    (["token", "alice", "--ttl", "1e300"], "at most 1,000,000,000"),
    (["--timeout", "nan", "status"], "at most 1,000,000,000, got nan"),
    (["--mdns-interface", "eth0", "status"], "'eth0' is not an IPv4 address"),
    (["--mdns-interface", "0.0.0.0", "status"], "0.0.0.0 is no interface"),
    (["resync", "core1", "--wait", "601"], "argument --wait: must be above zero and at most 600, got 601"),
])
def test_a_bad_argument_is_a_usage_error_that_names_it(argv: list[str], says: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and says in err, err


def test_the_options_every_command_takes_go_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("IRIS_MESH_CLUSTER", raising=False)
    before = _parser().parse_args(["--node", "127.0.0.1:7", "--timeout", "5", "rebalance", "--dry-run"])
    after = _parser().parse_args(["rebalance", "--dry-run", "--node", "127.0.0.1:7", "--timeout", "5"])
    for args in (before, after):
        assert (args.node, args.timeout, args.dry_run, args.cluster, args.mdns_timeout, args.mdns_interface) == \
            ("127.0.0.1:7", 5.0, True, "iris", 1.5, None)
    assert _parser().parse_args(["--node", "127.0.0.1:1", "status", "--node", "127.0.0.1:2"]).node == "127.0.0.1:2"
    monkeypatch.setenv("IRIS_MESH_COOKIE", "meshctl-test-cookie")
    assert main(["status", "--node", "127.0.0.1:9"]) == 2  # the option after the command is used: nothing there
    assert "nothing listens at tcp://127.0.0.1:9" in capsys.readouterr().err


def test_an_address_this_host_does_not_have_is_said_plainly(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IRIS_MESH_COOKIE", "meshctl-test-cookie")
    assert main(["--mdns-interface", "192.0.2.1", "status"]) == 2  # TEST-NET-1: no interface has it
    err = capsys.readouterr().err
    assert err.startswith("meshctl: cannot run mDNS on 192.0.2.1: ") and "an IPv4 address of this host" in err, err
    assert "Errno" not in err and "OSError" not in err, err


def test_an_unexpected_error_is_one_line_and_json_under_json(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*_args: object) -> None:
        raise ValueError("nothing checked this")

    monkeypatch.setattr("iris_mesh.cli.meshctl.Target", broken)
    assert main(["--json", "nodes"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"ok": False, "error": "cannot do this: ValueError: nothing checked this"}
    assert err == "meshctl: cannot do this: ValueError: nothing checked this\n"


def test_an_empty_backup_directory_is_a_usage_error_not_the_current_directory(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["backup", ""])
    assert exited.value.code == 2 and "must not be empty" in capsys.readouterr().err


def test_a_restore_into_a_data_root_that_does_not_exist_changes_nothing(tmp_path, capsys) -> None:
    (tmp_path / "backup" / "core1").mkdir(parents=True)
    assert main(["restore", str(tmp_path / "backup"), "--data-root", str(tmp_path / "typo")]) == 1
    assert "is not a directory (a typo?" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_a_node_s_backup_failure_gets_advice_for_its_cause() -> None:
    assert _backup_advice("exists", ["core1", "core2"], "/b") == (
        "/b already holds checkpoints of core1, core2 from an earlier backup (left as they were): "
        "take the backup into a new directory")
    assert _backup_advice("create", ["core1"], "/proc/x") == (
        "the directory /proc/x cannot be created (see why above): choose another one")
    assert _backup_advice("checkpoint", ["core1"], "/b") == (
        "the checkpoint of core1 failed (see why above): mend that, then take the backup again into a new directory")
    assert _backup_advice("silent", ["core2"], "/b").endswith(
        "may still be running into /b/NODE: give it longer with --wait")
    assert _backup_advice("stopping", ["core3"], "/b") == (
        "core3 was shutting down (the checkpoint was given up or not begun; nothing of it was kept): once it is back "
        "(`meshctl status`), take the backup again into a new directory")


def test_a_backup_waits_for_each_core_as_long_as_asked_ten_minutes_by_default() -> None:
    # A checkpoint onto another disk copies every table file: a fixed minute called a large core's backup failed.
    assert _parser().parse_args(["backup", "/b"]).wait == 600.0
    assert _parser().parse_args(["backup", "/b", "--wait", "3600"]).wait == 3600.0
    # A node of a version that sends no cause: read from its words.
    assert _cause_in_words("backup destination /b/core1 already exists; choose a new directory") == "exists"
    assert _cause_in_words("cannot create the directory /proc/x: No such file or directory") == "create"
    assert _cause_in_words("checkpoint into /b/core1 failed: IO error: No space left on device") == "checkpoint"


def backed_up_while_core3_was_down(tmp_path: Path) -> tuple[Path, Path]:
    """backup/ holds core1 and core2; data/ holds core1..3 (with a row written since the backup) and edge1."""
    for node in ("core1", "core2", "core3", "edge1"):
        db = Database(tmp_path / "data" / node)
        try:
            meta = NodeMeta(db)
            meta.claim(node, "iris")
            meta.save_expected_cores("local", {"core1", "core2", "core3"})  # an edge never expects itself
            if node in ("core1", "core2"):
                checkpoint(db, tmp_path / "backup" / node)
            db.put_synced("offline_msg", b"after-backup", b"x")
        finally:
            db.close()
    return tmp_path / "backup", tmp_path / "data"


def test_a_restore_of_a_backup_that_lacks_a_core_is_refused_naming_it_and_the_ways_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backup, data = backed_up_while_core3_was_down(tmp_path)
    (backup / "core3.partial").mkdir()  # core3's copy onto the backup disk, cut short
    (backup / "core3.partial" / "CURRENT").write_text("MANIFEST-000005\n")
    assert main(["restore", str(backup), "--data-root", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("leaving out core3.partial: unfinished copies, no checkpoints\n"
                          f"restoring core1, core2 from {backup} into {data} (all of them or none) ...\n"), err
    assert (f"meshctl: restore refused, nothing was changed: the backup has no checkpoint of core3 (its data is in "
            f"{data.resolve() / 'core3'}). A core started on its own data hands what the backup lacks back to the "
            "restored cores (hints, anti-entropy), and the restore is undone. Take a backup while every core runs, "
            "or restore anyway with --without-missing: the data of core3 is then moved aside (kept beside as "
            "NODE.replaced-TIME) and it starts empty, refilled from the restored cores\n") in err, err
    assert sorted(p.name for p in data.iterdir()) == ["core1", "core2", "core3", "edge1"]
    db = Database(data / "core1")
    try:
        assert db.get("offline_msg", b"after-backup") == b"x"
    finally:
        db.close()


def test_a_restore_without_the_missing_core_says_it_starts_empty(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    backup, data = backed_up_while_core3_was_down(tmp_path)
    assert main(["restore", str(backup), "--data-root", str(data), "--without-missing", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["restored"], doc["emptied"]) == (True, {"core1": str(data / "core1"),
                                                                   "core2": str(data / "core2")}, ["core3"])
    assert sorted(doc["replaced_kept_in"]) == ["core1", "core2", "core3"]
    assert Path(doc["replaced_kept_in"]["core3"]).name.startswith("core3.replaced-")
    assert list((data / "core3").iterdir()) == [] and (data / "edge1").is_dir()

    backup, data = backed_up_while_core3_was_down(tmp_path / "again")
    assert main(["restore", str(backup), "--data-root", str(data), "--without-missing", "--delete-replaced"]) == 0
    out = capsys.readouterr().out
    assert out == ("restored core1, core2; start the cluster again\ncore3: no checkpoint in the backup, so it starts "
                   "empty; anti-entropy refills it from the restored cores once the cluster runs (`meshctl resync "
                   "NODE` does it at once)\n"), out
    assert sorted(p.name for p in data.iterdir()) == ["core1", "core2", "core3", "edge1"]

    # A missing core with no data here: its data may be elsewhere, which this restore cannot move aside.
    backup, data = backed_up_while_core3_was_down(tmp_path / "elsewhere")
    shutil.rmtree(data / "core3")
    assert main(["restore", str(backup), "--data-root", str(data), "--without-missing"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("restored core1, core2; start the cluster again\ncore3 has no data in "), out
    assert "if its data is elsewhere (another data_dir, disk or host), move it aside there before starting it, " \
           "or it undoes the restore" in out, out
    assert "starts empty" not in out, out


def test_the_heartbeat_cell_of_nodes_tells_a_blocked_heartbeat_path_from_an_older_node() -> None:
    peer = {"self": False, "silent_s": 0.1}
    assert _heartbeat_text(peer | {"heartbeat_s": 0.123}) == "0.12s"
    assert _heartbeat_text(peer | {"heartbeat_s": None}) == "none"  # heard by its HELLOs only
    assert _heartbeat_text(peer) == "?"  # a node of a version that does not report it
    assert _heartbeat_text({"self": True, "silent_s": 0.0, "heartbeat_s": None}) == "-"
    assert _heartbeat_text({"self": False, "silent_s": None, "heartbeat_s": None}) == "-"  # not heard at all


def test_another_port_of_a_local_node_is_named_from_its_node_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from iris_mesh.cli._target import Target
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IRIS_MESH_COOKIE", "meshctl-test-cookie")
    node_dir = tmp_path / "var" / "data" / "edge1"
    node_dir.mkdir(parents=True)
    (node_dir / "node.json").write_text(json.dumps({
        "node_id": "edge1", "pid": 1, "incarnation": 1, "host": "127.0.0.1", "mesh_port": 4001,
        "heartbeat_port": 4002, "admin_port": 4003, "admin": "127.0.0.1:4003", "client_port": 4004}))
    (tmp_path / "var" / "data" / "broken").mkdir()
    (tmp_path / "var" / "data" / "broken" / "node.json").write_text("{not json")

    def said(port: int) -> str | None:
        return Target(_parser().parse_args(["--node", f"127.0.0.1:{port}", "status"]))._other_port()

    for port, kind in ((4001, "mesh"), (4002, "heartbeat"), (4004, "client")):
        assert said(port) == f"127.0.0.1:{port} is edge1's {kind} port, not its admin port: use --node 127.0.0.1:4003"


def test_a_resync_waits_at_most_as_long_as_a_node_runs_one_and_its_help_says_so(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert _parser().parse_args(["resync", "core1", "--wait", "600"]).wait == 600.0
    with pytest.raises(SystemExit):
        main(["resync", "--help"])
    assert "at most 600" in " ".join(capsys.readouterr().out.split())


class AnsweringTarget:
    """The node `name` answers every request with `reply`."""

    def __init__(self, name: str, reply: dict[str, Any]) -> None:
        self.name, self.reply = name, reply

    def first(self, op: str, *, avoid: str | None = None, **fields: Any) -> tuple[str, dict[str, Any]]:
        return self.name, dict(self.reply)


def json_of(cmd: Any, reply: dict[str, Any], capsys: pytest.CaptureFixture[str], **args: Any) -> dict[str, Any]:
    cmd(AnsweringTarget("core2", reply), argparse.Namespace(json=True, **args))
    return json.loads(capsys.readouterr().out)


def test_json_names_the_node_that_answered_as_the_text_does(capsys: pytest.CaptureFixture[str]) -> None:
    pong = {"ok": True, "node": "core3", "incarnation": 7, "rtt_ms": 0.4}
    assert json_of(cmd_ping, pong, capsys, target_node="core3") == dict(pong, via="core2")
    pang = {"ok": False, "error": "pang", "detail": "no answer from core3 within 2.0 s"}
    assert json_of(cmd_ping, pang, capsys, target_node="core3")["via"] == "core2"

    written = {"ok": True, "code": "ok", "detail": "", "acked_by": ["core1", "core2"], "error": None}
    key = {"table": "offline_msg", "key": "k", "durability": "guaranteed"}
    assert json_of(cmd_put, written, capsys, value="v", **key) == dict(written, coordinator="core2",
                                                                      durability="guaranteed")
    assert json_of(cmd_delete, written, capsys, **key) == dict(written, coordinator="core2", durability="guaranteed")

    found = {"ok": True, "found": True, "value": b"v", "version": {"hlc": 1, "node": "core1"}, "replicas": ["core1"]}
    doc = json_of(cmd_get, found, capsys, table="offline_msg", key="k", replica=None)
    assert (doc["coordinator"], doc["value"], doc["found"]) == ("core2", "v", True)
    absent = json_of(cmd_get, {"ok": True, "found": False}, capsys, table="offline_msg", key="k", replica=None)
    assert (absent["coordinator"], absent["ok"], absent["error"]) == ("core2", False, "not_found")


class StatusTarget(AnsweringTarget):
    """As AnsweringTarget, and mDNS found the nodes `found`."""

    def __init__(self, name: str, reply: dict[str, Any], found: list[str]) -> None:
        super().__init__(name, reply)
        self.found = found

    def endpoints(self, *, every_node: bool = True) -> list[tuple[str, str]]:
        return [(node, f"tcp://127.0.0.1:{7000 + n}") for n, node in enumerate(self.found)]


@pytest.mark.parametrize(("node_id", "says"), [
    ("core3", "core3 did not answer mDNS within 1.0 s and is not seen to the others: start it first"),
    ("core2", "core2 did not answer mDNS within 1.0 s and is dead to the others: start it first"),
    ("core9", "core9 is not a known node of this cluster"),
])
def test_a_resync_of_a_core_that_is_not_running_says_so_even_if_no_node_has_heard_it(node_id: str, says: str) -> None:
    status = {"node_id": "core1", "peers": {"core2": "dead"}, "expected": ["core1", "core2", "core3"]}
    target = StatusTarget("core1", {"ok": True, "status": status}, found=["core1"])
    args = argparse.Namespace(json=False, node=None, target_node=node_id, wait=30.0, mdns_timeout=1.0)
    with pytest.raises(CtlError, match=says) as raised:
        cmd_resync(target, args)  # type: ignore[arg-type]
    assert raised.value.code == EXIT_CHECK_FAILED


def test_backup_shows_the_cores_copying_onto_another_disk_and_how_far_they_got() -> None:
    statuses = [
        ("core1", {"ok": True, "status": {"backup_copy": {"dir": "/mnt/b", "copied_bytes": 3_200_000_000,
                                                          "total_bytes": 10_500_000_000}}}),
        ("core2", {"ok": True, "status": {}}),  # linked on its own disk, or done
        ("core3", AdminError("timeout", "no answer")),
        ("core4", {"ok": True, "status": {"backup_copy": {"dir": "/mnt/b", "copied_bytes": 0, "total_bytes": 0}}}),
    ]
    assert copy_progress(statuses) == ["core1: copying its checkpoint into /mnt/b: 3.2 of 10.5 GB (30 %)"]
    statuses[0][1]["status"]["backup_copy"].update(copied_bytes=120_000_000, total_bytes=640_000_000)
    assert copy_progress(statuses) == ["core1: copying its checkpoint into /mnt/b: 120.0 of 640.0 MB (18 %)"]


def test_backup_shows_the_copies_while_it_waits_for_the_cores(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(_backup_cmds, "PROGRESS_EVERY_S", 0.01)
    polled = threading.Event()

    looks = []

    def copying_a_quarter(request: Any) -> None:  # core1 copies 100 of 400 bytes while the backup waits
        looks.append(request)
        if len(looks) == 2:
            polled.set()
        request.reply({"ok": True, "status": {"backup_copy": {"dir": "/mnt/b", "copied_bytes": 100,
                                                              "total_bytes": 400}}})

    class Copying:
        """meshctl's view: the backup ends once core1 was looked at twice meanwhile."""

        keys = cluster_keys(b"backup-progress-test-cookie")

        def __init__(self, endpoint: str) -> None:
            self.endpoint = endpoint

        def endpoints(self) -> list[tuple[str, str]]:
            return [("core1", self.endpoint)]

        def each(self, op: str, timeout_s: float | None = None, **fields: Any) -> list[tuple[str, Any]]:
            assert op == "backup"
            assert polled.wait(30)
            return [("core1", {"ok": True, "node": "core1", "path": "/mnt/b/core1", "linked": False})]

    with admin_endpoint(Copying.keys, copying_a_quarter, "core1") as endpoint:
        answers = _backup_showing_copies(Copying(endpoint), "/mnt/b", 600.0)  # type: ignore[arg-type]
    assert answers == [("core1", {"ok": True, "node": "core1", "path": "/mnt/b/core1", "linked": False})]
    shown = capsys.readouterr().err.splitlines()
    assert len(shown) >= 1 and set(shown) == {"core1: copying its checkpoint into /mnt/b: 0.0 of 0.0 MB (25 %)"}
