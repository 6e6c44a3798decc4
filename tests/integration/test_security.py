"""Only cookie holders join the mesh, send frames, or use the admin endpoint; bad frames never kill a node."""

from __future__ import annotations

import os
import time

import cbor2
import zmq

from iris_mesh.sockets import cluster_keys, encode, envelope
from support.nodes import LocalCluster
from support.waiting import wait_until
from test_mesh import meshctl


def _dealer(ctx: zmq.Context, keys, identity: bytes, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.routing_id = identity
    keys.client(sock)
    sock.connect(endpoint)
    return sock


def test_node_with_the_wrong_cookie_never_joins(local_cluster: LocalCluster) -> None:
    core1 = local_cluster.add("core1")
    core2 = local_cluster.add("core2")
    local_cluster.start("core1", "core2")
    local_cluster.wait_full_mesh(["core1", "core2"])
    intruder = local_cluster.add("core3", cookie=b"not-the-cluster-cookie", seeds=[core1.mesh])
    intruder.start()

    # The intruder has had its chance: the good nodes saw its mDNS record, and it tried its seed for 3 s.
    wait_until(lambda: "ignoring node core3" in core1.log_path.read_text(), 10.0, "core1 to notice core3 on mDNS")
    wait_until(lambda: intruder.status()["uptime_s"] >= 3.0, 10.0, "core3 to run for 3 s")

    for good in (core1, core2):
        assert "core3" not in good.states(), good.states()
        assert good.status()["counters"].get("mesh_dropped_before_hello", 0) == 0
    intruder_status = intruder.status()
    assert intruder_status["peers"] == {}
    assert intruder_status["safe_for_writes"] is False


def test_frames_without_the_cookie_are_never_delivered(local_cluster: LocalCluster) -> None:
    core1 = local_cluster.add("core1", expected_cores=["core1"])
    core1.start()
    before = core1.status()["counters"]
    ctx = zmq.Context()
    try:
        wrong = _dealer(ctx, cluster_keys(b"wrong"), b"core9", f"tcp://{core1.mesh}")
        monitor = wrong.get_monitor_socket()
        frame = encode(envelope("hello", src="core9", inc=1, seq=0, card={}))
        wrong.send(frame)
        events = []

        def handshake_failed() -> bool:
            while monitor.poll(0):
                events.append(zmq.utils.monitor.recv_monitor_message(monitor)["event"])
            return any(e in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_AUTH) for e in events)

        wait_until(handshake_failed, 5.0, "the CURVE handshake with a wrong key to fail")
        after = core1.status()["counters"]
        assert after.get("mesh_in", 0) == before.get("mesh_in", 0)
        assert "core9" not in core1.states()
        wrong.disable_monitor()
        monitor.close(0)
    finally:
        ctx.destroy(linger=0)


def test_malformed_and_pre_hello_frames_are_dropped_and_counted(local_cluster: LocalCluster) -> None:
    core1 = local_cluster.add("core1", expected_cores=["core1"])
    core1.start()
    keys = cluster_keys(local_cluster.cookie)
    ctx = zmq.Context()
    try:
        sock = _dealer(ctx, keys, b"core7", f"tcp://{core1.mesh}")
        garbage = [
            b"", b"\xff\xfe", os.urandom(300), cbor2.dumps([1, 2, 3]), cbor2.dumps({"v": 1}),
            cbor2.dumps({"v": 999, "op": "hello"}), b"\x81" * 5000, cbor2.dumps({"v": 1 << 20000, "op": "hello"}),
        ]
        for frame in garbage:
            sock.send(frame)
        sock.send_multipart([b"two", b"parts"])
        # Well-formed, but before any HELLO: dropped too.
        sock.send(encode(envelope("ping", src="core7", inc=1, seq=1, nonce=b"12345678")))
        sock.send(encode(envelope("ping", src="core7", inc=1, seq=2, nonce=b"12345678")))

        def counted() -> dict | None:
            counters = core1.status()["counters"]
            return counters if counters.get("mesh_dropped_malformed", 0) >= len(garbage) + 1 and \
                counters.get("mesh_dropped_before_hello", 0) >= 2 else None

        counters = wait_until(counted, 5.0, "every bad frame to be counted")
        assert counters.get("handler_errors", 0) == 0
        # An oversized frame closes that connection inside libzmq; the node is unaffected.
        sock.send(b"\x00" * (2 << 20))
        assert core1.proc.poll() is None
        assert core1.status()["node_id"] == "core1"
    finally:
        ctx.destroy(linger=0)


def test_meshctl_with_the_wrong_cookie_says_authentication_failed(local_cluster: LocalCluster, tmp_path) -> None:
    core1 = local_cluster.add("core1", expected_cores=["core1"])
    core1.start()
    bad = tmp_path / "bad-cookie"
    bad.write_text("wrong-cookie\n")
    started = time.monotonic()
    result = meshctl(local_cluster, "--node", core1.admin, "--cookie-file", str(bad), "status")
    assert result.returncode == 2
    assert "authentication failed" in result.stderr
    assert time.monotonic() - started < 5.0
    # Found by mDNS, the cluster answers under its name with another cookie's key: said so, not "not running".
    found = meshctl(local_cluster, "--cluster", local_cluster.name, "--cookie-file", str(bad), "status")
    assert found.returncode == 2, found.stdout + found.stderr
    assert "answered mDNS (core1), but they use another cookie" in found.stderr, found.stderr
