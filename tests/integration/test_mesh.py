"""The mesh on loopback with real node processes: formation, failure detection, restarts, safe mode."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support.nodes import CORES, LocalCluster
from support.waiting import wait_until

ALL = [*CORES, "edge1", "edge2"]


def three_cores(cluster: LocalCluster) -> None:
    """core1..core3 with the default settings, started and meshed."""
    for node_id in CORES:
        cluster.add(node_id)
    cluster.start(*CORES)
    cluster.wait_full_mesh(list(CORES))


def meshctl(cluster: LocalCluster, *args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iris_mesh.cli.meshctl", *args],
        capture_output=True, text=True, timeout=timeout_s,
        env={"IRIS_MESH_COOKIE": cluster.cookie.decode(), "PATH": "/usr/bin:/bin"},
    )


def test_five_nodes_form_a_full_mesh_by_mdns(local_cluster: LocalCluster) -> None:
    # Nodes stay in safe mode for safe_mode_exit_s after they first see a majority of the cores: 3 s here,
    # so that the full mesh comes well before they accept writes.
    for node_id in CORES:
        local_cluster.add(node_id, safe_mode_exit_s=3.0)
    for node_id in ("edge1", "edge2"):
        local_cluster.add(node_id, role="edge", safe_mode_exit_s=3.0)
    started = time.monotonic()
    local_cluster.start(*ALL)
    local_cluster.wait_full_mesh(ALL, timeout_s=15.0)
    print(f"full mesh of 5 after {time.monotonic() - started:.2f} s")

    # `meshctl mesh` (what `make run` ends with) returns once the cluster takes writes, not merely once it is linked.
    done = meshctl(local_cluster, "--cluster", local_cluster.name, "mesh", "--expect", "5", "--wait", "15")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mesh complete: 5 nodes" in done.stdout, done.stdout
    refusing = [n for n in ALL if not local_cluster.nodes[n].status()["safe_for_writes"]]
    assert not refusing, f"meshctl mesh said complete while {refusing} still refused writes"
    status = meshctl(local_cluster, "--cluster", local_cluster.name, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "all nodes alive, writes safe" in status.stdout
    for node_id in ALL:
        assert node_id in status.stdout
    # What each node's process uses, for an operator watching for leaks: in the table and in --json.
    assert status.stdout.splitlines()[0].split()[-4:] == ["SESSIONS", "UP", "RSS", "REASON"]
    for node_id in ALL:  # client sessions: a number on edges (none connected here), "-" on cores
        sessions = "0" if node_id.startswith("edge") else "-"
        assert re.search(rf"(?m)^{node_id} .* {sessions} +\d+(s|m\d\ds) +\d+ MiB ", status.stdout), status.stdout
    as_json = meshctl(local_cluster, "--cluster", local_cluster.name, "status", "--json")
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    for node in json.loads(as_json.stdout)["nodes"]:
        usage = node["process"]
        assert usage["rss_bytes"] > 10 << 20 and usage["cpu_s"] > 0, node["node_id"]
        assert usage["threads"] >= 3 and usage["open_fds"] > 10, node["node_id"]
        assert re.search(rf"(?m)^{node['node_id']} .* \d+(s|m\d\ds) +\d+ MiB ", status.stdout), status.stdout

    # Once every node the first one found knows of has answered mDNS, meshctl stops listening: with a
    # 30 s --mdns-timeout, status still lists all five well before the 20 s deadline of this call.
    # (Nodes up for under 5 s may not know each other yet, so their view does not end a listen.)
    wait_until(lambda: all(local_cluster.nodes[n].status()["uptime_s"] >= 5.0 for n in ALL), 15.0, "5 s of uptime")
    quick = meshctl(local_cluster, "--cluster", local_cluster.name, "--mdns-timeout", "30", "status", timeout_s=20.0)
    assert quick.returncode == 0, quick.stdout + quick.stderr
    assert all(re.search(rf"(?m)^{node_id} ", quick.stdout) for node_id in ALL), quick.stdout


def test_mesh_forms_from_seeds_with_mdns_off(local_cluster: LocalCluster) -> None:
    first = local_cluster.add("core1", mdns=False)
    first.start()
    for node_id in ("core2", "core3"):
        local_cluster.add(node_id, mdns=False, seeds=[first.mesh])
    local_cluster.add("edge1", role="edge", mdns=False, seeds=[first.mesh])
    local_cluster.start("core2", "core3", "edge1")
    local_cluster.wait_full_mesh(["core1", "core2", "core3", "edge1"])
    # Nobody was announced on mDNS, so meshctl must be pointed at a node.
    nodes = meshctl(local_cluster, "--node", local_cluster.nodes["core3"].admin, "nodes", "--json")
    assert nodes.returncode == 0, nodes.stderr
    assert '"edge1"' in nodes.stdout


def test_killed_node_is_marked_dead_and_rejoins_with_a_higher_incarnation(local_cluster: LocalCluster) -> None:
    for node_id in CORES:
        local_cluster.add(node_id)
    local_cluster.add("edge1", role="edge")
    local_cluster.start(*CORES, "edge1")
    local_cluster.wait_full_mesh([*CORES, "edge1"])
    victim = local_cluster.nodes["core2"]
    old_incarnation = victim.incarnation

    victim.kill()
    survivors = ["core1", "core3", "edge1"]
    wait_until(
        lambda: all(local_cluster.nodes[n].states().get("core2") == "dead" for n in survivors),
        5.0, "every survivor to mark core2 dead",
    )
    # One core of three down: the other two still have a majority.
    assert all(local_cluster.nodes[n].status()["safe_for_writes"] for n in ("core1", "core3"))
    # What an operator reads: the verdict and the mesh check name the node that is down.
    status = meshctl(local_cluster, "--cluster", local_cluster.name, "status")
    assert status.returncode == 1, status.stdout + status.stderr
    assert re.search(r"(?m)^CHECK FAILED: not alive: core2 \(dead to \d; from here: not running\); writes go on with "
                     r"2 of 3 cores: one more core down stops them\n  next: start core2 if it is not running \(its admin "
                     r"port refuses connections", status.stdout), status.stdout
    mesh = meshctl(local_cluster, "--cluster", local_cluster.name, "mesh", "--expect", "4", "--wait", "1")
    assert mesh.returncode == 1, mesh.stdout + mesh.stderr
    assert re.search(r"mesh NOT complete .* nodes found \(.*\); not found: .*core2 \(dead\)", mesh.stdout), mesh.stdout
    # Without --expect too: a node the others see dead is a hole in the mesh, not a smaller complete one.
    unsized = meshctl(local_cluster, "--cluster", local_cluster.name, "mesh", "--wait", "1")
    assert unsized.returncode == 1 and "not found: core2 (dead)" in unsized.stdout, unsized.stdout + unsized.stderr

    victim.start()
    assert victim.incarnation > old_incarnation
    local_cluster.wait_full_mesh([*CORES, "edge1"])
    for node_id in survivors:
        rows = {n["node_id"]: n for n in local_cluster.nodes[node_id].request("nodes")["nodes"]}
        assert rows["core2"]["incarnation"] == victim.incarnation

    # An edge that is down is named by `latency` too (it is in no table of latencies, and not quietly left out).
    local_cluster.nodes["edge1"].kill()
    wait_until(lambda: local_cluster.nodes["core1"].states().get("edge1") == "dead", 5.0, "edge1 dead")
    latency = meshctl(local_cluster, "--cluster", local_cluster.name, "latency")
    assert latency.returncode == 1 and "not answering: edge1" in latency.stdout, latency.stdout + latency.stderr


def peer_row(cluster: LocalCluster, seen_by: str, node_id: str) -> dict[str, Any]:
    return next(row for row in cluster.nodes[seen_by].request("nodes")["nodes"] if row["node_id"] == node_id)


def test_a_core_restarted_at_the_same_ports_is_not_suspected_by_its_peers(local_cluster: LocalCluster) -> None:
    three_cores(local_cluster)
    victim = local_cluster.nodes["core2"]
    # Fixed ports, as production nodes have: the restarted process binds the ones its peers know.
    victim.settings.update({key: victim.info[key] for key in ("mesh_port", "heartbeat_port", "admin_port")})
    victim.kill()
    survivors = ["core1", "core3"]
    # Down long enough for ZeroMQ's reconnect back-off to reach its maximum (a second between attempts).
    wait_until(lambda: all((peer_row(local_cluster, n, "core2")["silent_s"] or 0) >= 3.0 for n in survivors),
               10.0, "core2 silent for 3 s on every survivor")
    victim.start()

    def heartbeat_heard(seen_by: str) -> bool:
        row = peer_row(local_cluster, seen_by, "core2")
        return row["incarnation"] == victim.incarnation and row["heartbeat_s"] is not None

    # Its HELLO makes it alive at once; until its first heartbeat arrives, a late subscription would
    # leave it silent, and it would be suspected after suspect_after_s (0.8 s).
    wait_until(lambda: all(heartbeat_heard(n) for n in survivors), 10.0,
               "every survivor to hear a heartbeat of the restarted core2")
    for node_id in survivors:
        log = local_cluster.nodes[node_id].log_path.read_text(errors="replace")
        since_restart = log[log.rindex("core2 restarted"):]
        assert "core2 is suspect" not in since_restart, since_restart
    nodes = meshctl(local_cluster, "--node", local_cluster.nodes["core1"].admin, "nodes")
    assert re.search(r"(?m)^core2 +core .* alive .* \d+\.\d\ds +\d+\.\d\ds$", nodes.stdout), nodes.stdout


def test_a_core_stopped_on_purpose_is_dead_at_once_and_no_peer_warns(local_cluster: LocalCluster) -> None:
    three_cores(local_cluster)
    local_cluster.nodes["core2"].stop()  # SIGTERM, as make stop_node does
    survivors = ["core1", "core3"]
    # Dead at once, without a suspicion first: it said goodbye on its way out.
    wait_until(lambda: all(local_cluster.nodes[n].states().get("core2") == "dead" for n in survivors), 5.0,
               "every survivor to take core2 for stopped")
    for node_id in survivors:
        log = local_cluster.nodes[node_id].log_path.read_text(errors="replace")
        assert re.search(r"(?m)^.* INFO .*core2 stopped \(it said so: a planned stop\)$", log), log
        since_stop = log[log.index("core2 stopped (it said so"):]
        assert "core2 is suspect" not in since_stop and "core2 is dead" not in since_stop, since_stop
    wait_until(lambda: all(local_cluster.nodes[n].status()["safe_for_writes"] for n in survivors), 5.0,
               "the survivors (2 of 3 cores) to accept writes")
    # meshctl status names it so: stopped on purpose, not a failure to look into.
    assert all(local_cluster.nodes[n].status()["stopped"] == ["core2"] for n in survivors)
    verdict = meshctl(local_cluster, "--cluster", local_cluster.name, "status")
    assert verdict.returncode == 1 and "stopped on purpose: core2 (seen stopped by 2)" in verdict.stdout, verdict.stdout
    pang = local_cluster.nodes["core1"].request("ping", node="core2")
    assert pang["error"] == "pang" and pang["detail"] == "core2 is not connected (state: dead, stopped on purpose)", pang


def test_losing_the_majority_enters_safe_mode_and_recovery_leaves_it(local_cluster: LocalCluster) -> None:
    three_cores(local_cluster)
    core1 = local_cluster.nodes["core1"]
    wait_until(lambda: core1.status()["safe_for_writes"], 10.0, "core1 to accept writes")

    local_cluster.nodes["core2"].kill()
    local_cluster.nodes["core3"].kill()
    def in_safe_mode() -> dict | None:
        status = core1.status()
        return None if status["safe_for_writes"] else status

    status = wait_until(in_safe_mode, 5.0, "core1 to enter safe mode")
    assert status["visible_cores"] == 1 and status["expected_cores"] == 3
    wait_until(
        lambda: "PARTITION DETECTED - entering safe mode (1 of 3 cores visible); not heard: core2, core3 (down, hung, "
                "or cut off from this node by the network)" in core1.log_path.read_text(),
        5.0, "the safe-mode log line, naming the cores not heard",
    )
    failed = meshctl(local_cluster, "--node", core1.admin, "status")
    assert failed.returncode == 1, failed.stdout
    assert "REFUSED" in failed.stdout

    local_cluster.start("core2", "core3")
    wait_until(lambda: core1.status()["safe_for_writes"], 10.0, "core1 to leave safe mode")
    assert core1.log_path.read_text().count("PARTITION DETECTED") == 1
    assert "leaving safe mode" in core1.log_path.read_text()


def test_ping_and_replicas_through_meshctl(local_cluster: LocalCluster) -> None:
    three_cores(local_cluster)
    admin = local_cluster.nodes["core1"].admin

    pong = meshctl(local_cluster, "--node", admin, "ping", "core3")
    assert pong.returncode == 0 and "pong from core3" in pong.stdout, pong.stdout + pong.stderr
    unknown = meshctl(local_cluster, "--node", admin, "ping", "nosuchnode")
    assert unknown.returncode == 1

    replicas = meshctl(local_cluster, "--node", admin, "replicas", "test_key", "--json")
    assert replicas.returncode == 0, replicas.stderr
    assert '"live": 3' in replicas.stdout

    # --json carries the answer and not the admin frame's wire fields; its "ok" agrees with the exit code.
    wait_until(lambda: all(local_cluster.nodes[n].status()["safe_for_writes"] for n in CORES), 10.0, "writes safe")
    put = meshctl(local_cluster, "--node", admin, "put", "offline_msg", "test_key", "v1", "--json")
    read = meshctl(local_cluster, "--node", admin, "get", "offline_msg", "test_key", "--json")
    missing = meshctl(local_cluster, "--node", admin, "get", "offline_msg", "no_such_key", "--json")
    pong_json = meshctl(local_cluster, "--node", admin, "ping", "core3", "--json")
    # Without mDNS: every node in core1's view is asked, not core1 alone.
    mesh = meshctl(local_cluster, "--node", admin, "mesh", "--expect", "3", "--wait", "5")
    assert mesh.returncode == 0 and "mesh complete: 3 nodes" in mesh.stdout, mesh.stdout + mesh.stderr
    assert [c.returncode for c in (put, read, missing, pong_json)] == [0, 0, 1, 0], [put, read, missing, pong_json]
    docs = [json.loads(c.stdout) for c in (put, read, missing, pong_json)]
    assert [d["ok"] for d in docs] == [True, True, False, True]
    assert not any({"v", "op", "rid"} & set(d) for d in docs), docs
    assert docs[1]["value"] == "v1" and (docs[2]["found"], docs[2]["error"]) == (False, "not_found"), docs

    local_cluster.nodes["core2"].kill()
    wait_until(lambda: local_cluster.nodes["core1"].states()["core2"] == "dead", 5.0, "core2 dead")
    two_live = meshctl(local_cluster, "--node", admin, "replicas", "test_key")
    assert two_live.returncode == 0 and "2 of 3 live" in two_live.stdout, two_live.stdout
    local_cluster.nodes["core3"].kill()
    wait_until(lambda: local_cluster.nodes["core1"].states()["core3"] == "dead", 5.0, "core3 dead")
    no_quorum = meshctl(local_cluster, "--node", admin, "replicas", "test_key")
    assert no_quorum.returncode == 1 and "NO QUORUM" in no_quorum.stdout

    # Restarted while they are down, core1 has heard nothing of core3: it is down, not a name the cluster lacks.
    local_cluster.nodes["core1"].stop()
    local_cluster.nodes["core1"].start()
    admin = local_cluster.nodes["core1"].admin
    down = meshctl(local_cluster, "--node", admin, "ping", "core3")
    assert down.returncode == 1 and "core3 is not connected (an expected core not heard since core1 started" in \
        down.stdout + down.stderr, down.stdout + down.stderr
    copy = meshctl(local_cluster, "--node", admin, "get", "offline_msg", "test_key", "--replica", "core3")
    assert copy.returncode == 1 and "core3 is not alive now" in copy.stdout + copy.stderr, copy.stdout + copy.stderr
    listed = meshctl(local_cluster, "--node", admin, "nodes")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {line.split()[0]: line.split()[3] for line in listed.stdout.splitlines()[2:] if line.startswith("core")}
    assert rows == {"core1*": "alive", "core2": "not", "core3": "not"}, listed.stdout  # "not seen"
    assert "not seen: core2, core3 (expected cores core1 has not heard since it started" in listed.stdout


def test_replicas_counts_the_configured_write_quorum(local_cluster: LocalCluster) -> None:
    local_cluster.add("core1", write_quorum=3)  # every replica must fsync this node's writes
    for node_id in CORES[1:]:
        local_cluster.add(node_id)
    local_cluster.start(*CORES)
    local_cluster.wait_full_mesh(list(CORES))
    local_cluster.nodes["core3"].kill()
    wait_until(lambda: local_cluster.nodes["core1"].states()["core3"] == "dead", 5.0, "core3 dead")
    wait_until(lambda: local_cluster.nodes["core1"].status()["safe_for_writes"], 10.0, "core1 to accept writes")

    strict = meshctl(local_cluster, "--node", local_cluster.nodes["core1"].admin, "replicas", "some_key", "--json")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    doc = json.loads(strict.stdout)
    assert (doc["live"], doc["quorum"], doc["quorum_available"]) == (2, 3, False), doc
    put = meshctl(local_cluster, "--node", local_cluster.nodes["core1"].admin, "put", "offline_msg", "some_key", "x")
    assert put.returncode == 1 and "unavailable" in put.stdout, put.stdout + put.stderr  # as replicas said
    usual = meshctl(local_cluster, "--node", local_cluster.nodes["core2"].admin, "replicas", "some_key", "--json")
    assert usual.returncode == 0 and json.loads(usual.stdout)["quorum"] == 2, usual.stdout + usual.stderr


def test_meshctl_cannot_reach_exits_2(local_cluster: LocalCluster) -> None:
    started = time.monotonic()
    result = meshctl(local_cluster, "--node", "127.0.0.1:9", "--timeout", "30", "status")
    assert result.returncode == 2
    assert "nothing listens at tcp://127.0.0.1:9 (connection refused)" in result.stdout + result.stderr, result
    assert time.monotonic() - started < 10  # a refused connection is said at once, not after --timeout


def test_meshctl_pointed_at_a_mesh_port_names_the_admin_port(local_cluster: LocalCluster) -> None:
    three_cores(local_cluster)
    core1 = local_cluster.nodes["core1"]
    # The node's mesh port answers the admin request itself: no mDNS (another cluster name finds nothing) and
    # no node.json is needed to name the right port.
    for cluster in (local_cluster.name, f"not-{local_cluster.name}"):
        wrong = meshctl(local_cluster, "--cluster", cluster, "--node", core1.mesh, "--timeout", "2", "status")
        assert wrong.returncode == 2, wrong.stdout + wrong.stderr
        said = wrong.stdout + wrong.stderr
        assert f"{core1.mesh} is core1's mesh port, not its admin port: use --node {core1.admin}" in said, said
    counters = core1.status()["counters"]
    # Answered and counted as misdirected, not as garbage from the network (what mesh_dropped_malformed means).
    assert counters["mesh_misdirected_admin"] >= 2 and counters.get("mesh_dropped_malformed", 0) == 0, counters


def test_a_stopped_peer_never_blocks_the_others(local_cluster: LocalCluster) -> None:
    three_cores(local_cluster)
    frozen = local_cluster.nodes["core3"]
    frozen.kill(signal.SIGSTOP)
    try:
        core1 = local_cluster.nodes["core1"]
        wait_until(lambda: core1.states()["core3"] == "dead", 5.0, "core1 to mark the stopped core3 dead")
        # core1 keeps serving: ping to the frozen node fails fast, ping to core2 works.
        started = time.monotonic()
        assert core1.request("ping", node="core3", timeout_s=5.0)["ok"] is False
        assert time.monotonic() - started < 4.0
        assert core1.request("ping", node="core2")["ok"] is True
        assert core1.status()["safe_for_writes"] is True
    finally:
        frozen.kill(signal.SIGCONT)
    local_cluster.wait_full_mesh(list(CORES))


def test_forget_shrinks_the_expected_core_set_everywhere(local_cluster: LocalCluster) -> None:
    for node_id in (*CORES, "core4"):
        local_cluster.add(node_id)
    local_cluster.start(*CORES, "core4")
    everyone = [*CORES, "core4"]
    local_cluster.wait_full_mesh(everyone)
    core1 = local_cluster.nodes["core1"]
    wait_until(lambda: core1.status()["expected_cores"] == 4, 5.0, "core4 to join the expected set")

    refused = meshctl(local_cluster, "--node", core1.admin, "forget", "core4")
    assert refused.returncode == 1 and "stop it before forgetting it" in refused.stderr

    local_cluster.nodes["core4"].stop()
    wait_until(lambda: core1.states().get("core4") == "dead", 5.0, "core4 dead")
    # Writes while it is down leave hints for it (3 of 4 keys have it among their replicas).
    wait_until(lambda: all(local_cluster.nodes[c].status()["safe_for_writes"] for c in CORES), 10.0,
               "the cores to take writes with 3 of 4 cores")
    reply = core1.request("put_batch", timeout_s=30.0, table="offline_msg",
                          items=[[f"user{i}\x00m", b"v"] for i in range(40)])
    assert reply["ok"], str(reply)
    assert sum(local_cluster.nodes[c].status()["hints_pending"] for c in CORES) > 0
    done = meshctl(local_cluster, "--node", core1.admin, "forget", "core4")
    assert done.returncode == 0, done.stderr
    for node_id in CORES:
        wait_until(lambda: local_cluster.nodes[node_id].status()["expected_cores"] == 3, 5.0, f"{node_id} to forget core4")
        # Its hints go with it: it will never take them, and "catching up" must not last for ever.
        wait_until(lambda: local_cluster.nodes[node_id].status()["hints_pending"] == 0, 5.0,
                   f"{node_id} to drop the hints for core4")
    # Forgetting it again, or a node that never was, is refused: nothing was forgotten.
    for unknown in ("core4", "nosuch"):
        again = meshctl(local_cluster, "--node", core1.admin, "forget", unknown)
        assert again.returncode == 1 and "is not a known node" in again.stderr, again.stdout + again.stderr
    # The shrunk set survives a restart (it is persisted in meta), even with core4 listed in the config.
    local_cluster.nodes["core2"].stop()
    local_cluster.nodes["core2"].settings["expected_cores"] = [*CORES, "core4"]
    local_cluster.nodes["core2"].start()
    assert local_cluster.nodes["core2"].status()["expected_cores"] == 3

    # core4 comes back with its old data, which may hold deletes whose tombstones the others purged since the
    # forget: it is kept out, sets that data aside and starts again (the same process) on an empty directory.
    core4 = local_cluster.nodes["core4"]
    first = core4.start().incarnation
    aside = core4.data_dir.parent
    wait_until(lambda: list(aside.glob("core4.forgotten-*")), 15.0, "core4 to set its data aside")
    core4.wait_serving()
    assert core4.incarnation > first and core4.proc is not None and core4.proc.poll() is None
    # Until the operator deletes it, the old data is named: at each start, and in `meshctl status`.
    kept = [Path(path) for path in core4.status()["kept_aside"]]
    assert [path.name for path in kept] == [path.name for path in aside.glob("core4.forgotten-*")], kept
    assert "old data of this core is kept in" in core4.log_tail(200)
    wait_until(lambda: core1.status()["expected_cores"] == 4, 10.0, "core4 to be let back in")
    assert "set its data aside" in core4.log_tail(200) or "data of this core is kept in" in core4.log_tail(200)
    core4.stop()
    wait_until(lambda: core1.states().get("core4") == "dead", 5.0, "core4 stopped")
    assert meshctl(local_cluster, "--node", core1.admin, "forget", "core4").returncode == 0

    # Alone (core2 and core3 stopped), core1 is a minority: the forget that would give it a majority needs a word.
    for node_id in ("core2", "core3"):
        local_cluster.nodes[node_id].stop()
    wait_until(lambda: set(core1.states().values()) == {"dead"}, 5.0, "core2 and core3 dead")
    assert meshctl(local_cluster, "--node", core1.admin, "forget", "core3").returncode == 0  # 1 of 2 after it
    alone = meshctl(local_cluster, "--node", core1.admin, "forget", "core2")
    assert alone.returncode == 1 and "would let it take writes with 1 of 1" in alone.stderr, alone.stderr
    assert core1.status()["expected_cores"] == 2
    assert meshctl(local_cluster, "--node", core1.admin, "forget", "core2", "--minority").returncode == 0
    wait_until(lambda: core1.status()["safe_for_writes"], 5.0, "core1 to take writes alone")
