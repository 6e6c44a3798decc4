"""ZeroMQ transport: the only package that imports zmq."""

from __future__ import annotations

from iris_mesh.sockets._admin_client import AdminClient, AdminError, reach
from iris_mesh.sockets._codec import DEFAULT_MAX_FRAME_BYTES, FrameError, decode, decode_mesh, encode, envelope
from iris_mesh.sockets._curve import ClusterKeys, cluster_keys
from iris_mesh.sockets._engine import Engine
from iris_mesh.sockets._engine_types import AdminRequest, BoundPorts, EngineError, EngineHandler
from iris_mesh.sockets._options import BindError, SocketTuning

__all__ = [
    "AdminClient",
    "AdminError",
    "AdminRequest",
    "BindError",
    "BoundPorts",
    "ClusterKeys",
    "DEFAULT_MAX_FRAME_BYTES",
    "Engine",
    "EngineError",
    "EngineHandler",
    "FrameError",
    "SocketTuning",
    "cluster_keys",
    "decode",
    "decode_mesh",
    "encode",
    "envelope",
    "reach",
]
