"""AdminClient: meshctl's side of the admin endpoint (CURVE DEALER with a handshake monitor)."""

from __future__ import annotations

import itertools
import socket
import time
from typing import Any, Literal

import zmq
import zmq.utils.monitor as zmq_monitor

from iris_mesh.sockets._codec import FrameError, decode, encode, envelope
from iris_mesh.sockets._curve import ClusterKeys

__all__ = ["AdminClient", "AdminError", "reach"]

# A handshake that fails without detail this soon after the connection was made was ended by the node:
# it could not read our CURVE hello (another cookie's keys). One that fails after about `handshake_ivl`
# timed out: the node is stuck or paused, or the port is not an admin port at all.
_REFUSED_WITHIN_IVL_FRACTION = 0.9  # a timeout comes at handshake_ivl; a refusal, well before


class AdminError(Exception):
    """A request could not be answered. `code`: unreachable, refused (nothing listens there), auth_failed, bad_reply."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class AdminClient:
    """Sends admin requests to one node and waits for each answer with a deadline."""

    def __init__(self, endpoint: str, keys: ClusterKeys, *, timeout_s: float = 3.0) -> None:
        self.endpoint = endpoint
        self._timeout_s = timeout_s
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.linger = 0
        self._sock.sndhwm = 100
        self._sock.reconnect_ivl = 100
        self._sock.reconnect_ivl_max = 500
        self._sock.handshake_ivl = int(timeout_s * 1000)
        keys.client(self._sock)
        self._monitor = self._sock.get_monitor_socket()
        self._sock.connect(endpoint)
        self._rids = itertools.count(1)
        self._handshaken = False
        self.timed_out = False  # the last request failed for want of an answer in time (not for what answered)
        self._handshake_s = timeout_s
        self._connected_at = time.monotonic()
        self._ever_connected = False

    def request(self, op: str, *, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return the reply map; raises AdminError."""
        rid = next(self._rids)
        timeout = self._timeout_s if timeout_s is None else timeout_s
        self._sock.send(encode(envelope(op, rid=rid, **fields)))
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                if self._handshaken:
                    raise AdminError("unreachable", f"{self.endpoint} did not answer {op!r} within {timeout} s")
                raise AdminError("unreachable", f"cannot reach {self.endpoint} within {timeout} s (is the node running?)")
            for sock, _ in poller.poll(int(left * 1000) + 1):
                if sock is self._monitor:
                    self._on_event(zmq_monitor.recv_monitor_message(self._monitor))
                    continue
                try:
                    reply = decode(self._sock.recv())
                except FrameError as exc:
                    raise AdminError("bad_reply", f"unreadable reply from {self.endpoint}: {exc}") from None
                if reply.get("rid") == rid:
                    return reply
                if "rid" not in reply and reply.get("op") != "reply":
                    # Not an admin reply (those are `reply`, with the request's `rid` when it could be read): a
                    # client-protocol frame, so an edge's client gateway answered.
                    raise AdminError("unreachable", f"{self.endpoint} is an edge's client port, not an admin port "
                                                    "(the ADMIN column of `meshctl nodes` lists them)")

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == zmq.EVENT_CONNECTED:
            self._connected_at = time.monotonic()
            self._ever_connected = True
        elif kind == zmq.EVENT_CONNECT_RETRIED and not self._ever_connected:
            # The first connection was refused: nothing listens there (waiting out the timeout would not help).
            raise AdminError("refused", f"nothing listens at {self.endpoint} (connection refused): is the node "
                                        "running, and is that its admin port? A node on port 0 takes new ports "
                                        "at every start (var/data/NODE/node.json has the current ones)")
        elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._handshaken = True
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            raise AdminError("unreachable", f"{self.endpoint} does not speak this cluster's admin protocol "
                                            "(is it an iris_mesh node's admin port?)")
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and \
                time.monotonic() - self._connected_at >= _REFUSED_WITHIN_IVL_FRACTION * self._handshake_s:
            self.timed_out = True
            raise AdminError("unreachable", f"{self.endpoint} accepted the connection but did not complete the "
                                            f"handshake within {self._handshake_s:g} s: the node is stuck or paused, "
                                            "or this is not an iris_mesh admin port")
        elif kind in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            raise AdminError(
                "auth_failed",
                f"authentication failed at {self.endpoint}: this cookie is not the cluster's "
                "(check --cookie-file or IRIS_MESH_COOKIE)",
            )

    @property
    def connected(self) -> bool:
        """Whether a TCP connection was made (the handshake may not have followed)."""
        return self._ever_connected

    @property
    def handshaken(self) -> bool:
        """Whether the CURVE handshake with the node was completed: a process that speaks ZeroMQ runs there."""
        return self._handshaken

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(0)
        self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Reach = Literal["answers", "refused", "unreachable", "hung", "stuck"]


def reach(endpoint: str, keys: ClusterKeys, node_id: str, timeout_s: float) -> Reach | None:
    """How node `node_id` looks from here at its admin endpoint `tcp://HOST:PORT`, for one its peers see dead; takes
    up to about 2 x `timeout_s`:

    - "answers": it answers, as that node;
    - "refused": the port refuses connections (nothing listens: not running; or a firewall rejects them);
    - "unreachable": no connection within `timeout_s` (its host is down, a network cut is in between; or the
      connection queue of a node hung for long is full);
    - "hung": the connection is taken (by the kernel) but nothing speaks on it: a process stopped by a signal;
    - "stuck": the connection and its handshake are made but no answer comes in time: overloaded or stuck;
    - None: something else answers there (another cluster's node, another node, not an admin port).

    ValueError for another kind of endpoint.
    """
    host, sep, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not endpoint.startswith("tcp://") or not sep or not host or not port.isdigit():
        raise ValueError(f"{endpoint!r} is not a tcp://HOST:PORT endpoint")
    try:  # refused and unreachable told apart by the kernel (ZeroMQ retries both alike)
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except ConnectionRefusedError:
        return "refused"
    except OSError:  # timed out, no route to the host
        return "unreachable"
    with AdminClient(endpoint, keys, timeout_s=timeout_s) as client:
        try:
            reply = client.request("status")
        except AdminError as exc:
            if exc.code == "refused":  # it stopped meanwhile
                return "refused"
            if not client.timed_out:
                return None
            return "stuck" if client.handshaken else "hung" if client.connected else "unreachable"
    status = reply.get("status")
    return "answers" if isinstance(status, dict) and status.get("node_id") == node_id else None
