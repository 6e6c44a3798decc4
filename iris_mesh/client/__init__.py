"""The Python SDK of iris_mesh: log in, send, receive (docs/PROTOCOL.md is the wire contract).

    from iris_mesh.client import Client
    with Client.connect() as alice:               # an edge found by mDNS ($IRIS_MESH_CLUSTER, else "iris")
        alice.login("alice", token)               # token from: meshctl token alice
        r = alice.send("bob", b"hi")              # SendResult(id, status): delivered or stored
        alice.send("bob", b"hi", id=r.id)         # the same id again: still one copy
        m = alice.receive(timeout=5.0)            # Message(id, sender, body, ts) or None; acked once returned

Errors are IrisError; `.code` is a code of docs/PROTOCOL.md section 8, or
`closed` / `timeout` (LOCAL_ERROR_CODES) for conditions the SDK detects itself.
"""

from __future__ import annotations

from iris_mesh.client._client import Client
from iris_mesh.client._edges import EdgeAddress, EdgeFinder, MdnsEdgeFinder, StaticEdgeFinder
from iris_mesh.client._errors import ERROR_CODES, LOCAL_ERROR_CODES, RETRYABLE_ERROR_CODES, IrisError
from iris_mesh.client._options import ClientOptions
from iris_mesh.client._types import Message, Presence, SendResult
from iris_mesh.sockets._client_conn import ClientSocketTuning

__all__ = [
    "Client",
    "ClientOptions",
    "ClientSocketTuning",
    "ERROR_CODES",
    "EdgeAddress",
    "EdgeFinder",
    "IrisError",
    "LOCAL_ERROR_CODES",
    "MdnsEdgeFinder",
    "Message",
    "Presence",
    "RETRYABLE_ERROR_CODES",
    "SendResult",
    "StaticEdgeFinder",
]
