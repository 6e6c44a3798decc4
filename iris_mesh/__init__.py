"""iris_mesh: a brokerless messaging mesh on ZeroMQ."""

from __future__ import annotations

__all__ = ["__version__", "PROTOCOL_VERSION"]

__version__ = "0.1.0"

# Version of the wire protocol (mesh and client frames, mDNS TXT records).
PROTOCOL_VERSION = 1
