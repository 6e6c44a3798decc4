"""Messaging: the edge's brain (sessions, tokens, delivery, inboxes) and the client protocol."""

from __future__ import annotations

from iris_mesh.messaging._edge import EdgeService, EdgeSettings
from iris_mesh.messaging._protocol import ERROR_CODES, Limits, ProtocolError
from iris_mesh.messaging._rebalance import moves_text
from iris_mesh.messaging._tokens import TokenError, issue_token, token_secret, verify_token

__all__ = [
    "ERROR_CODES",
    "EdgeService",
    "EdgeSettings",
    "Limits",
    "ProtocolError",
    "TokenError",
    "issue_token",
    "moves_text",
    "token_secret",
    "verify_token",
]
