"""Anti-entropy with real node processes: a core that missed writes and deletes catches up with no hints."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

from support.nodes import CORES, LocalCluster, NodeProcess
from support.waiting import wait_until

TABLE = "offline_msg"
WRITES = 10_000
DOOMED = 100
BATCH = 2000


# meshctl stops listening for mDNS once every alive node answered; the default 1.5 s is too short to
# hear a core that is busy catching up, on a loaded machine.
MDNS_TIMEOUT_S = "10"


def meshctl(cluster: LocalCluster, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    options = () if "--mdns-timeout" in args else ("--mdns-timeout", MDNS_TIMEOUT_S)
    return subprocess.run(
        [sys.executable, "-m", "iris_mesh.cli.meshctl", "--cluster", cluster.name, *options, *args],
        capture_output=True, text=True, timeout=timeout_s,
        env={"IRIS_MESH_COOKIE": cluster.cookie.decode(), "PATH": "/usr/bin:/bin"},
    )


def put_batch(node: NodeProcess, items: list[list[object]]) -> None:
    for start in range(0, len(items), BATCH):
        reply = node.request("put_batch", timeout_s=30.0, table=TABLE, items=items[start:start + BATCH])
        assert reply["ok"], json.dumps(reply)


def counts(node: NodeProcess) -> dict[str, int]:
    return node.request("tables")["tables"]


def counter(node: NodeProcess, name: str) -> int:
    return int(node.status()["counters"].get(name, 0))


def replica_read(node: NodeProcess, key: bytes) -> dict[str, object]:
    reply = node.request("get", table=TABLE, key=key, replica=node.node_id)
    assert reply["ok"], reply
    return reply


def test_a_core_down_for_10k_writes_and_deletes_matches_its_peers_from_anti_entropy_alone(
    local_cluster: LocalCluster,
) -> None:
    for node_id in CORES:
        local_cluster.add(node_id, anti_entropy_interval_s=1.0)
    local_cluster.start(*CORES)
    local_cluster.wait_full_mesh(list(CORES))
    core1, core2, core3 = (local_cluster.nodes[n] for n in CORES)
    wait_until(lambda: all(n.status()["safe_for_writes"] for n in (core1, core2, core3)), 10.0, "writes to be safe")

    # Rows core3 will hold stale copies of: they are deleted while it is down.
    doomed = [b"doomed-%03d" % i for i in range(DOOMED)]
    put_batch(core1, [[key, b"stale"] for key in doomed])
    wait_until(lambda: counts(core3)[TABLE] == DOOMED, 10.0, "core3 to hold the doomed rows")

    core3.stop()
    wait_until(lambda: all(n.states().get("core3") == "dead" for n in (core1, core2)), 10.0, "core3 to be dead")
    keys = [b"user%03d:msg%05d" % (i % 500, i) for i in range(WRITES)]
    started = time.monotonic()
    put_batch(core1, [[key, b"value-%d" % i] for i, key in enumerate(keys)])
    took = time.monotonic() - started
    print(f"\n{WRITES} quorum writes (put_batch of {BATCH}) took {took:.2f} s")
    put_batch(core2, [[key, None] for key in doomed])

    # Hints would repair core3 on their own: drop them, so only anti-entropy can.
    for node in (core1, core2):
        assert node.request("drop_hints", target="core3")["dropped"] == WRITES + DOOMED
    wait_until(lambda: counts(core1)["hints"] == 0 and counts(core2)["hints"] == 0, 10.0, "the hints to be gone")
    handed_off = counter(core1, "hints_handed_off") + counter(core2, "hints_handed_off")
    # A core that is down: a failed check, not an unreachable cluster. meshctl listens the whole --mdns-timeout
    # for a node that is down, and the cores are idle now: a shorter one will do.
    down = meshctl(local_cluster, "--mdns-timeout", "3", "resync", "core3")
    assert down.returncode == 1 and "core3 did not answer mDNS" in down.stderr and "dead" in down.stderr, down.stderr

    rejoined = time.monotonic()
    core3.start()
    wait_until(lambda: counts(core3)[TABLE] == WRITES, 10.0, "core3 alone to hold every row (deleted ones excluded)")
    caught_up = time.monotonic() - rejoined
    print(f"core3 matched its peers {caught_up:.2f} s after it was started again")

    # Every row on core3 itself is the written one; every doomed row is a tombstone there.
    for key in random.Random(7).sample(keys, 300):
        reply = replica_read(core3, key)
        assert reply["found"] and reply["value"] == b"value-%d" % keys.index(key), (key, reply)
    for key in doomed:
        reply = replica_read(core3, key)
        assert not reply["found"] and reply["version"] is not None, (key, reply)
    shown = meshctl(local_cluster, "get", TABLE, keys[1234].decode(), "--replica", "core3")
    assert shown.returncode == 0 and "value-1234" in shown.stdout, shown.stdout + shown.stderr
    gone = meshctl(local_cluster, "get", TABLE, doomed[0].decode(), "--replica", "core3")
    assert gone.returncode == 1 and "not found (deleted)" in gone.stdout, gone.stdout + gone.stderr
    assert counter(core1, "hints_handed_off") + counter(core2, "hints_handed_off") == handed_off
    assert counter(core3, "ae_pulled") + counter(core1, "ae_pushed") + counter(core2, "ae_pushed") >= WRITES + DOOMED

    # A forced full pass compares every key again; the deletes still hold everywhere.
    resync = meshctl(local_cluster, "resync", "core3", "--json")
    assert resync.returncode == 0, resync.stdout + resync.stderr
    report = json.loads(resync.stdout)
    assert report["ok"] and [p["peer"] for p in report["peers"]] == ["core1", "core2"]
    for peer in report["peers"]:
        assert peer["code"] == "ok" and peer["listed"] == WRITES + DOOMED and peer["pushed"] == peer["pulled"] == 0
    text = meshctl(local_cluster, "resync", "core3")
    assert text.returncode == 0 and "full anti-entropy pass of core3 with 2 peers: ok" in text.stdout, text.stdout
    for node in (core1, core2, core3):
        assert counts(node)[TABLE] == WRITES
        assert not replica_read(node, doomed[-1])["found"]
    assert not core1.request("get", table=TABLE, key=doomed[0])["found"]
    unknown = meshctl(local_cluster, "resync", "core9")
    assert unknown.returncode == 1 and "core9 is not a known node" in unknown.stderr, unknown.stderr
