"""AdminClient's errors name the cause: another cookie is an authentication failure, a silent port is not."""

from __future__ import annotations

import socket
import time
from typing import Iterator

import pytest

from iris_mesh.sockets import AdminClient, AdminError, cluster_keys, reach
from support.admin_endpoint import admin_endpoint as answering

KEYS = cluster_keys(b"admin-client-test-cookie")


@pytest.fixture
def admin_endpoint() -> Iterator[str]:
    with answering(KEYS, lambda request: request.reply({"ok": True, "status": {"node_id": "admin"}}), "admin") as at:
        yield at


def test_the_cluster_cookie_gets_an_answer(admin_endpoint: str) -> None:
    with AdminClient(admin_endpoint, KEYS, timeout_s=3.0) as client:
        assert client.request("status")["ok"] is True


def test_another_cookie_is_an_authentication_failure_said_at_once(admin_endpoint: str) -> None:
    started = time.monotonic()
    with AdminClient(admin_endpoint, cluster_keys(b"some-other-cookie"), timeout_s=3.0) as client:
        with pytest.raises(AdminError) as refused:
            client.request("status")
    assert refused.value.code == "auth_failed" and "cookie is not the cluster's" in str(refused.value)
    assert time.monotonic() - started < 1.5


def test_a_port_that_accepts_and_never_answers_is_unreachable_not_an_authentication_failure() -> None:
    # What a paused (SIGSTOP) node looks like: the kernel accepts the connection, nothing answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        with AdminClient(endpoint, KEYS, timeout_s=1.0) as client:  # the handshake may take 1 s
            with pytest.raises(AdminError) as refused:
                client.request("status", timeout_s=5.0)  # the answer longer: the handshake's end decides
    assert refused.value.code == "unreachable", str(refused.value)
    assert "did not complete the handshake within 1 s" in str(refused.value)


def test_a_port_where_nothing_listens_is_refused_at_once() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    with AdminClient(endpoint, KEYS, timeout_s=20.0) as client:
        with pytest.raises(AdminError) as refused:
            client.request("status")
    assert refused.value.code == "refused" and "nothing listens at" in str(refused.value), str(refused.value)
    assert time.monotonic() - started < 5.0  # not the 20 s timeout


def test_how_a_node_that_others_see_dead_looks_from_here(admin_endpoint: str) -> None:
    """`meshctl status` tells a process that is not running from a hung one and from one beyond a network cut."""
    assert reach(admin_endpoint, KEYS, "admin", timeout_s=2.0) == "answers"
    assert reach(admin_endpoint, KEYS, "core9", timeout_s=2.0) is None  # another node has its port now
    assert reach(admin_endpoint, cluster_keys(b"some-other-cookie"), "admin", timeout_s=2.0) is None
    with socket.socket() as probe:  # nothing listens there now
        probe.bind(("127.0.0.1", 0))
        free = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    assert reach(free, KEYS, "admin", timeout_s=2.0) == "refused"
    with socket.socket() as listener:  # a paused (SIGSTOP) node: the kernel takes the connection, nothing answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        started = time.monotonic()
        assert reach(f"tcp://127.0.0.1:{listener.getsockname()[1]}", KEYS, "admin", timeout_s=0.5) == "hung"
        assert time.monotonic() - started < 3.0
    with socket.socket() as listener, socket.socket() as first:  # SYNs dropped, as beyond a cut (its queue is full)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        first.connect(listener.getsockname())
        started = time.monotonic()
        assert reach(f"tcp://127.0.0.1:{listener.getsockname()[1]}", KEYS, "admin", timeout_s=0.5) == "unreachable"
        assert time.monotonic() - started < 3.0
    with pytest.raises(ValueError, match="not a tcp://HOST:PORT endpoint"):
        reach("ipc:///tmp/x", KEYS, "admin", timeout_s=0.5)


def test_a_node_whose_engine_takes_the_handshake_but_never_answers_is_stuck_not_hung() -> None:
    with answering(KEYS, lambda request: None, "busy") as endpoint:  # an engine too busy to answer
        assert reach(endpoint, KEYS, "busy", timeout_s=0.5) == "stuck"
