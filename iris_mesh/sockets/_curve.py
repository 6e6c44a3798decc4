"""The cluster's CURVE keypair, derived from the cookie, and the ZAP policy.

Every holder of the cookie derives the same Curve25519 keypair. Mesh, heartbeat
and admin sockets are CURVE servers with that keypair and admit, through ZAP
domain `mesh`, only clients that prove they hold its secret key too. The client
gateway (ZAP domain `client`) admits any client key: users are authenticated
later, by their login token.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import zmq
import zmq.utils.z85 as z85

__all__ = ["ClusterKeys", "cluster_keys", "ZapPolicy", "ZAP_DOMAIN_MESH", "ZAP_DOMAIN_CLIENT", "ZAP_ENDPOINT"]

ZAP_DOMAIN_MESH = "mesh"
ZAP_DOMAIN_CLIENT = "client"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_VERSION = b"1.0"
_KEY_CONTEXT = b"iris-mesh cluster curve key v1\x00"


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """Z85-encoded CURVE keypair shared by every node of a cluster."""

    public: bytes
    secret: bytes

    @property
    def fingerprint(self) -> str:
        """Short, non-secret id of the keypair: nodes advertise it so others can tell a different cookie."""
        return hashlib.sha256(self.public).hexdigest()[:12]

    def server(self, sock: zmq.Socket, domain: str) -> None:
        """Make `sock` a CURVE server checked by ZAP in `domain`; call before bind."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = domain.encode()

    def client(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE client proving the cluster key; call before connect."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.public


def cluster_keys(cookie: bytes) -> ClusterKeys:
    """Derive the cluster keypair from the cookie (deterministic, one-way)."""
    if not cookie:
        raise ValueError("the cluster cookie is empty")
    secret_raw = hashlib.blake2b(cookie, digest_size=32, person=b"iris-mesh-curve", key=_KEY_CONTEXT[:64]).digest()
    secret = z85.encode(secret_raw)
    return ClusterKeys(public=zmq.curve_public(secret), secret=secret)


class ZapPolicy:
    """Answers ZAP requests: `mesh` admits only the cluster key, `client` admits any CURVE key.

    The engine thread owns the ZAP socket and calls `async_reply` for each request,
    so authentication needs no thread of its own.
    """

    __slots__ = ("_cluster_public_raw", "denied", "admitted")

    def __init__(self, keys: ClusterKeys) -> None:
        self._cluster_public_raw = z85.decode(keys.public)
        self.denied = 0
        self.admitted = 0

    def async_reply(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply frames (after the routing envelope) for one ZAP request, or None if unanswerable."""
        if len(frames) < 6:
            return None
        version, request_id, domain, _address, _identity, mechanism = frames[:6]
        credentials = frames[6:]
        if version != _ZAP_VERSION:
            return self._deny(request_id, b"400", b"unsupported ZAP version")
        if mechanism != b"CURVE" or not credentials:
            return self._deny(request_id, b"400", b"CURVE required")
        if domain == ZAP_DOMAIN_CLIENT.encode():
            return self._admit(request_id, b"client")
        if domain == ZAP_DOMAIN_MESH.encode() and credentials[0] == self._cluster_public_raw:
            return self._admit(request_id, b"cluster")
        return self._deny(request_id, b"400", b"not a member of this cluster")

    def _admit(self, request_id: bytes, user: bytes) -> list[bytes]:
        self.admitted += 1
        return [_ZAP_VERSION, request_id, b"200", b"OK", user, b""]

    def _deny(self, request_id: bytes, code: bytes, text: bytes) -> list[bytes]:
        self.denied += 1
        return [_ZAP_VERSION, request_id, code, text, b"", b""]
