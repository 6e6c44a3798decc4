"""The replicated store with real node processes: quorum, failures, crash durability, restarts, backups and restores."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from pathlib import Path

from iris_mesh.sockets import AdminClient, AdminError, cluster_keys
from support.nodes import CORES, LocalCluster, NodeProcess
from support.waiting import wait_until
from test_mesh import meshctl


def _cores(cluster: LocalCluster, *extra: str, **settings) -> list[str]:
    names = [*CORES, *extra]
    for node_id in names:
        cluster.add(node_id, expected_cores=names, **settings)
    cluster.start(*names)
    cluster.wait_full_mesh(names)
    for node_id in names:
        wait_until(lambda: cluster.nodes[node_id].status()["safe_for_writes"], 10.0, f"{node_id} to accept writes")
    return names


def _put(node: NodeProcess, key: str, value: str, **fields) -> dict:
    return node.request("put", table="offline_msg", key=key, value=value, timeout_s=10.0, **fields)


def _get(node: NodeProcess, key: str, **fields) -> dict:
    return node.request("get", table="offline_msg", key=key, timeout_s=10.0, **fields)


def test_quorum_with_one_core_down_and_a_backup_taken_meanwhile(local_cluster: LocalCluster, tmp_path: Path) -> None:
    _cores(local_cluster)
    core1 = local_cluster.nodes["core1"]
    assert _put(core1, "alice", "hello")["ok"]
    local_cluster.nodes["core3"].kill()
    wait_until(lambda: core1.states()["core3"] == "dead", 5.0, "core3 dead")

    written = _put(core1, "bob", "hi bob")
    assert written["ok"], written
    assert sorted(written["acked_by"]) == ["core1", "core2"]
    for key, value in (("alice", b"hello"), ("bob", b"hi bob")):
        read = _get(local_cluster.nodes["core2"], key)
        assert read["ok"] and read["found"] and read["value"] == value
    # The missed write is kept as a hint for core3 on the replicas that took it.
    counts = core1.request("tables")["tables"]
    assert counts["hints"] >= 1 and core1.status()["hints_pending"] == counts["hints"]  # `meshctl status` tells it
    # The dead core's own copy, or a node that does not exist, cannot be read: said at once, with the reason.
    for replica, code, detail in (("core3", "unavailable", "core3 is not alive now"),
                                  ("core9", "unknown_node", "core9 is not a known node")):
        started = time.monotonic()
        refused = _get(core1, "alice", replica=replica)
        assert (refused["ok"], refused["error"]) == (False, code) and detail in refused["detail"], refused
        assert time.monotonic() - started < 1.0
    # A backup now lacks core3: it says so and fails the check (a nightly backup script must notice).
    backup = meshctl(local_cluster, "--cluster", local_cluster.name, "backup", str(tmp_path / "b"), "--json")
    assert backup.returncode == 1, backup.stdout + backup.stderr
    doc = json.loads(backup.stdout)
    assert (doc["ok"], doc["missing"], sorted(doc["checkpoints"])) == (False, ["core3"], ["core1", "core2"]), doc
    assert doc["linked"] == ["core1", "core2"], doc  # on the data's disk: hard links, lost with that disk
    # Latency on every node names the core that is down (it exited 0 with core3 simply missing).
    latency = meshctl(local_cluster, "--cluster", local_cluster.name, "latency")
    assert latency.returncode == 1 and "not answering: core3" in latency.stdout, latency.stdout + latency.stderr
    # A ping of core1 goes through another node, so it tests a round trip over the mesh.
    pong = meshctl(local_cluster, "--cluster", local_cluster.name, "ping", "core1")
    assert pong.returncode == 0 and "asked via core1" not in pong.stdout, pong.stdout + pong.stderr
    # Asked alone, a core shows its own rows; the cores not asked are not called "not answering".
    own = meshctl(local_cluster, "--node", core1.admin, "tables")
    assert own.returncode == 0 and "not answering" not in own.stdout, own.stdout + own.stderr
    # Asked alone, a core is the only one checkpointed, and the text says the others were not asked.
    text = meshctl(local_cluster, "--node", core1.admin, "backup", str(tmp_path / "c"))
    assert text.returncode == 1 and "INCOMPLETE: no checkpoint of core2, core3" in text.stdout, text.stdout
    assert f"checkpointing only the node at {core1.admin} (--node)" in text.stderr, text.stderr
    assert "core2: NOT BACKED UP (not asked: with --node only that node is checkpointed)" in text.stdout, text.stdout
    assert text.stdout.endswith("next: leave out --node to checkpoint every core\n"
                                f"(the checkpoints that were written stay in {tmp_path / 'c'})\n"), text.stdout
    # A backup that cannot be written says why in words, with advice that fits the cause.
    taken = meshctl(local_cluster, "--cluster", local_cluster.name, "backup", str(tmp_path / "b"))
    assert taken.returncode == 1 and "already exists: a backup goes into a new directory" in taken.stderr, taken.stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["core1", "core2"]
    (tmp_path / "file").write_text("")
    uncreatable = tmp_path / "file" / "backup"
    failed = meshctl(local_cluster, "--cluster", local_cluster.name, "backup", str(uncreatable))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"core1: FAILED: cannot create the directory {uncreatable}: Not a directory" in failed.stdout, failed.stdout
    assert f"next: the directory {uncreatable} cannot be created (see why above): choose another one; " \
           "start core3" in failed.stdout, failed.stdout
    assert "Error" not in failed.stdout, failed.stdout
    # Asked alone, a core that fails is named by its id once, not also called "not asked".
    alone = meshctl(local_cluster, "--node", core1.admin, "backup", str(uncreatable))
    assert alone.returncode == 1 and "core1: FAILED: cannot create the directory" in alone.stdout, alone.stdout
    assert "core1: NOT BACKED UP" not in alone.stdout and core1.admin not in alone.stdout, alone.stdout

    # core3 comes back and is written to: its data is newer than the backup, which lacks it.
    core3 = local_cluster.nodes["core3"]
    core3.start()
    local_cluster.wait_full_mesh(list(CORES))
    # Its own log says the run before was killed (a clean stop removes node.json; SIGKILL left it).
    assert core3.log_path.read_text().count("did not stop cleanly") == 1, core3.log_tail()
    assert _put(core1, "late", "written after the backup")["ok"]
    wait_until(lambda: _get(core1, "late", replica="core3").get("found"), 10.0, "core3 to hold the late write")
    local_cluster.stop()
    data = local_cluster.root / "data"
    before = sorted(p.name for p in data.iterdir())
    refused = meshctl(local_cluster, "restore", str(tmp_path / "b"), "--data-root", str(data))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "restore refused, nothing was changed: the backup has no checkpoint of core3" in refused.stderr
    assert "--without-missing" in refused.stderr and sorted(p.name for p in data.iterdir()) == before
    restored = meshctl(local_cluster, "restore", str(tmp_path / "b"), "--data-root", str(data), "--without-missing",
                       "--json")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert json.loads(restored.stdout)["emptied"] == ["core3"], restored.stdout
    local_cluster.start(*CORES)
    core2 = local_cluster.nodes["core2"]
    wait_until(lambda: core2.status()["safe_for_writes"], 10.0, "the restored cluster to accept writes")
    # core3 started empty and is refilled from the restored cores: the backup's state, not its own newer data.
    for key, value in (("alice", b"hello"), ("bob", b"hi bob")):
        wait_until(lambda: _get(core2, key, replica="core3").get("found"), 20.0, f"core3 to be refilled with {key}")
        assert _get(core2, key, replica="core3")["value"] == value
    resync = meshctl(local_cluster, "--cluster", local_cluster.name, "resync", "core3")
    assert resync.returncode == 0, resync.stdout + resync.stderr
    for replica in CORES:
        assert not _get(core2, "late", replica=replica)["found"], replica
    assert not _get(core2, "late")["found"]


def test_write_with_two_replicas_down_fails_fast_with_unavailable(local_cluster: LocalCluster) -> None:
    names = _cores(local_cluster, "core4", "core5")
    core1 = local_cluster.nodes["core1"]
    # A key none of whose replicas is core1, so that core1 can coordinate while two of them are down.
    key = next(k for k in (f"user{i}" for i in range(1000))
               if "core1" not in [r["node_id"] for r in core1.request("replicas", key=k)["replicas"]])
    replicas = [r["node_id"] for r in core1.request("replicas", key=key)["replicas"]]
    for victim in replicas[:2]:
        local_cluster.nodes[victim].kill()
    wait_until(lambda: all(core1.states()[v] == "dead" for v in replicas[:2]), 5.0, "two replicas dead")
    assert core1.status()["safe_for_writes"]  # 3 of 5 cores: still a majority

    started = time.monotonic()
    failed = _put(core1, key, "v")
    assert failed["ok"] is False and failed["code"] == "unavailable", failed
    assert time.monotonic() - started < 2.0  # store_timeout_s
    assert _get(core1, key)["error"] == "unavailable"
    assert len(names) == 5


def test_core_in_safe_mode_refuses_writes_but_still_reads(local_cluster: LocalCluster) -> None:
    _cores(local_cluster)
    core1 = local_cluster.nodes["core1"]
    assert _put(core1, "carol", "before")["ok"]
    local_cluster.nodes["core2"].kill()
    local_cluster.nodes["core3"].kill()
    wait_until(lambda: not core1.status()["safe_for_writes"], 5.0, "core1 in safe mode")
    refused = _put(core1, "carol", "during")
    assert refused["ok"] is False and refused["code"] == "partition_detected"
    replica = _get(core1, "carol", replica="core1")
    assert replica["found"] and replica["value"] == b"before"


class _Writer(threading.Thread):
    """Writes unique keys with quorum through one node and records which were acknowledged."""

    def __init__(self, node: NodeProcess) -> None:
        super().__init__(name="test-writer", daemon=True)
        self._endpoint = f"tcp://{node.admin}"
        self._keys = cluster_keys(node.cookie)
        self.acked: list[str] = []
        self.attempts = 0
        self.errors: dict[str, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        client = AdminClient(self._endpoint, self._keys, timeout_s=5.0)
        try:
            while not self.halt.is_set():
                key = f"m{self.attempts:06d}"
                self.attempts += 1
                try:
                    reply = client.request("put", table="offline_msg", key=key, value=f"value of {key}")
                except AdminError as exc:
                    self.errors[exc.code] = self.errors.get(exc.code, 0) + 1
                    client.close()
                    client = AdminClient(self._endpoint, self._keys, timeout_s=5.0)
                    continue
                if reply.get("ok"):
                    self.acked.append(key)
                else:
                    self.errors[reply.get("code", "?")] = self.errors.get(reply.get("code", "?"), 0) + 1
        finally:
            client.close()


def test_no_acknowledged_write_is_lost_to_crashes(local_cluster: LocalCluster) -> None:
    _cores(local_cluster)
    edge = local_cluster.add("edge1", role="edge")
    edge.start()
    local_cluster.wait_full_mesh([*CORES, "edge1"])
    wait_until(lambda: edge.status()["safe_for_writes"], 10.0, "edge1 to accept writes")
    rng = random.Random(7)
    writer = _Writer(edge)
    writer.start()
    try:
        for _ in range(4):
            acked_before = len(writer.acked)
            wait_until(lambda: len(writer.acked) >= acked_before + 200, 20.0, "200 more acknowledged writes")
            victim = local_cluster.nodes[rng.choice(CORES)]
            victim.kill()
            victim.start()
        # Every core at once.
        for node_id in CORES:
            local_cluster.nodes[node_id].proc.kill()
        writer.halt.set()
        writer.join(timeout=30)
    finally:
        writer.halt.set()
    for node_id in CORES:
        local_cluster.nodes[node_id].proc.wait(timeout=10)
    local_cluster.start(*CORES)
    wait_until(lambda: edge.status()["safe_for_writes"], 15.0, "the restarted cluster to accept writes")

    keys = cluster_keys(edge.cookie)
    lost = []
    with AdminClient(f"tcp://{edge.admin}", keys, timeout_s=10.0) as client:
        for key in writer.acked:
            reply = client.request("get", table="offline_msg", key=key)
            if not (reply.get("ok") and reply.get("found") and reply["value"] == f"value of {key}".encode()):
                lost.append((key, reply))
    print(f"attempts={writer.attempts} acked={len(writer.acked)} lost={len(lost)} errors={writer.errors}")
    assert len(writer.acked) >= 800
    assert lost == [], f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"


def test_whole_cluster_restart_keeps_data_and_is_writable_within_10s(local_cluster: LocalCluster) -> None:
    _cores(local_cluster)
    core1 = local_cluster.nodes["core1"]
    for i in range(50):
        assert _put(core1, f"k{i}", f"v{i}")["ok"]
    local_cluster.stop()
    started = time.monotonic()
    local_cluster.start(*CORES)
    wait_until(lambda: _put(local_cluster.nodes["core2"], "after", "restart")["ok"], 10.0, "a quorum write after restart")
    print(f"writable {time.monotonic() - started:.2f} s after the restart began")
    for i in range(50):
        read = _get(local_cluster.nodes["core3"], f"k{i}")
        assert read["found"] and read["value"] == f"v{i}".encode()


def test_meshctl_latency_shows_the_writes_a_node_coordinated_and_every_core_s_commits(local_cluster: LocalCluster) -> None:
    _cores(local_cluster)
    for i in range(5):
        assert _put(local_cluster.nodes["core1"], f"lat{i}", "x")["ok"]
    shown = meshctl(local_cluster, "--cluster", local_cluster.name, "latency", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    nodes = json.loads(shown.stdout)["nodes"]
    assert sorted(nodes) == list(CORES)
    writes = nodes["core1"]["writes"]  # core1 coordinated the puts it was asked for
    assert writes["count"] == 5 and writes["failed"] == 0 and 0 < writes["p50_ms"] <= writes["max_ms"]
    for core in CORES:
        assert nodes[core]["role"] == "core"
        assert nodes[core]["commit"]["count"] >= 1 and nodes[core]["fsync"]["count"] >= 1
        engine = nodes[core]["rocksdb"]  # the storage engine behind those numbers: idle, holding the writes
        assert engine["memtable_bytes"] > 0 and engine["writes_stopped"] == engine["delayed_write_rate"] == 0
        assert engine["wal_bytes"] > 0  # the writes are in the WAL, not yet in table files
        assert set(engine) == {"memtable_bytes", "wal_bytes", "table_file_bytes", "l0_files",
                               "pending_compaction_bytes", "flushes_running", "compactions_running",
                               "delayed_write_rate", "writes_stopped"}
    assert nodes["core2"]["writes"]["count"] == 0

    text = meshctl(local_cluster, "--cluster", local_cluster.name, "latency")
    assert text.returncode == 0, text.stdout + text.stderr
    rows = [line.split() for line in text.stdout.splitlines()]
    assert ["NODE", "ROLE", "WHAT", "COUNT", "FAILED", "P50", "MS", "P90", "MS", "P99", "MS", "MAX", "MS"] in rows
    assert any(row[:5] == ["core1", "core", "writes", "5", "0"] for row in rows), text.stdout
    for core in CORES:
        engine_line = rf"(?m)^{core}: memtables [\d.]+ MiB, WAL \d+ MiB, table files \d+ MiB, level-0 files \d+, "
        assert re.search(engine_line + ".*; writes not throttled$", text.stdout), text.stdout


def test_backup_then_restore_gives_exactly_the_backed_up_state(local_cluster: LocalCluster, tmp_path: Path) -> None:
    _cores(local_cluster)
    core1 = local_cluster.nodes["core1"]
    for i in range(20):
        assert _put(core1, f"b{i}", f"v{i}")["ok"]
    backup_dir = tmp_path / "backup-1"
    # The backup of every core: meshctl finds them all by mDNS.
    backup = meshctl(local_cluster, "--cluster", local_cluster.name, "backup", str(backup_dir))
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert sorted(p.name for p in backup_dir.iterdir()) == list(CORES)
    assert backup.stdout.endswith(  # the test's backup is on the data's disk
        f"note: the checkpoints of core1, core2, core3 share their table files with the data (hard links on the "
        f"same disk, no extra space at first): copy {backup_dir} to another disk to keep the backup through that "
        "disk's loss\n"), backup.stdout
    assert _put(core1, "b0", "changed after backup")["ok"]
    assert _put(core1, "late", "written after backup")["ok"]

    local_cluster.stop()
    restore = meshctl(local_cluster, "restore", str(backup_dir), "--data-root", str(local_cluster.root / "data"),
                      "--json")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    # The data the backup replaced is kept beside it, in case it was the wrong backup.
    kept = json.loads(restore.stdout)["replaced_kept_in"]
    assert sorted(kept) == list(CORES) and all(Path(path).is_dir() for path in kept.values()), kept
    local_cluster.start(*CORES)
    core2 = local_cluster.nodes["core2"]
    wait_until(lambda: core2.status()["safe_for_writes"], 10.0, "the restored cluster to accept writes")
    for i in range(20):
        read = _get(core2, f"b{i}")
        assert read["found"] and read["value"] == f"v{i}".encode(), read
    assert not _get(core2, "late")["found"]
    # Each core's log says its data was put back, and from which backup.
    for core in CORES:
        node = local_cluster.nodes[core]
        line = f"this node's data was put back from the backup {(backup_dir / core).resolve()} by `meshctl restore`"
        assert node.log_path.read_text().count(line) == 1, node.log_tail()


def test_a_core_is_not_restored_alone_and_restored_cores_rejoin_a_running_edge_as_new_incarnations(
        local_cluster: LocalCluster, tmp_path: Path) -> None:
    # The backup holds the incarnation core3 had then; core3 restarts after it, so the edge, which runs
    # on through the restore, knows a later one. Restored and started, core3 must still be told apart
    # from every earlier process of it (peers ignore a node whose incarnation went back, and take an
    # equal one for the same process).
    _cores(local_cluster)
    edge = local_cluster.add("edge1", role="edge")
    edge.start()
    everyone = [*CORES, "edge1"]
    local_cluster.wait_full_mesh(everyone)
    core3 = local_cluster.nodes["core3"]
    backup_dir = tmp_path / "backup-3"
    assert meshctl(local_cluster, "--cluster", local_cluster.name, "backup", str(backup_dir)).returncode == 0
    core3.stop()
    core3.start()
    local_cluster.wait_full_mesh(everyone)
    before_restore = core3.incarnation
    core3.stop()
    # core3 alone would be brought forward again by the others' data: refused, naming them.
    data = local_cluster.root / "data"
    only_core3 = tmp_path / "only-core3"
    only_core3.mkdir()
    (only_core3 / "core3").symlink_to(backup_dir / "core3")
    alone = meshctl(local_cluster, "restore", str(only_core3), "--data-root", str(data))
    assert alone.returncode == 1, alone.stdout + alone.stderr
    assert f"no checkpoint of core1 (its data is in {data / 'core1'}), core2 (its data is in" in alone.stderr, alone.stderr
    assert sorted(p.name for p in data.iterdir()) == [*CORES, "edge1"]
    # The whole backup, with the edge running: its data is not the backup's, and stays as it is.
    local_cluster.stop("core1", "core2")
    restore = meshctl(local_cluster, "restore", str(backup_dir), "--data-root", str(data))
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert restore.stdout.startswith("restored core1, core2, core3; start the cluster again\n"), restore.stdout
    assert not [p.name for p in data.iterdir() if p.name.startswith("edge1.")]
    local_cluster.start(*CORES)
    assert core3.incarnation > before_restore

    def seen_by_edge1() -> bool:
        row = next(n for n in edge.request("nodes")["nodes"] if n["node_id"] == "core3")
        return row["state"] == "alive" and row["incarnation"] == core3.incarnation

    wait_until(seen_by_edge1, 10.0, "edge1 to see the restored core3 alive, as its new incarnation")
    local_cluster.wait_full_mesh(everyone)


def test_restore_refuses_while_the_node_runs(local_cluster: LocalCluster, tmp_path: Path) -> None:
    _cores(local_cluster)
    backup_dir = tmp_path / "backup-2"
    assert meshctl(local_cluster, "--cluster", local_cluster.name, "backup", str(backup_dir)).returncode == 0
    refused = meshctl(local_cluster, "restore", str(backup_dir), "--data-root", str(local_cluster.root / "data"))
    assert refused.returncode == 1
    assert "core1" in refused.stderr
    assert _get(local_cluster.nodes["core1"], "anything")["ok"]
