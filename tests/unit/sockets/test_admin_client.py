"""AdminClient's errors name the cause: another cookie is an authentication failure, a silent port is not."""

from __future__ import annotations

import socket
import time
from typing import Any, Iterator

import pytest

from iris_mesh.sockets import AdminClient, AdminError, cluster_keys
from iris_mesh.sockets._engine import Engine

KEYS = cluster_keys(b"admin-client-test-cookie")


class Handler:
    def async_on_start(self, engine: Any, now: float) -> None:
        pass

    def async_tick(self, now: float) -> float:
        return 1.0

    def async_after_batch(self, now: float) -> None:
        return None

    def async_on_admin(self, request: Any, now: float) -> None:
        request.reply({"ok": True})

    def async_on_stop(self, now: float) -> None:
        pass


@pytest.fixture
def admin_endpoint() -> Iterator[str]:
    engine = Engine(node_id="admin", incarnation=1, keys=KEYS, handler=Handler(),  # type: ignore[arg-type]
                    bind_address="127.0.0.1")
    ports = engine.start()
    try:
        yield f"tcp://127.0.0.1:{ports.admin}"
    finally:
        engine.stop()


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
