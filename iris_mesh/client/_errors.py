"""IrisError: every failure the SDK reports, with a code from the documented list or a local one."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from iris_mesh.messaging._protocol import ERROR_CODES, RETRYABLE_ERROR_CODES

__all__ = ["ERROR_CODES", "LOCAL_ERROR_CODES", "RETRYABLE_ERROR_CODES", "IrisError"]

# Conditions the SDK detects itself; the server never sends these codes.
LOCAL_ERROR_CODES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "closed": "the client was closed (or its I/O thread stopped) before the operation finished",
        "timeout": "no answer within the operation's deadline; for a send, whether it arrived is unknown:"
        " resend it with the same id",
        "login_lost": "a send waited for its answer when the client's login again after a failover was refused:"
        " whether it arrived is unknown; log in again, then resend it with the same id",
    }
)


class IrisError(Exception):
    """A failed operation: `code` from docs/PROTOCOL.md section 8 or LOCAL_ERROR_CODES; `detail` is for humans."""

    def __init__(self, code: str, detail: str, retry_after: float | None = None, id: bytes | None = None) -> None:
        """`id`: for a failed send, its message id (what a resend with the same id passes as send(..., id=))."""
        if code not in ERROR_CODES and code not in LOCAL_ERROR_CODES:
            raise ValueError(f"{code!r} is neither a documented nor a local error code")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.id = id

    def of_send(self, msg_id: bytes) -> IrisError:
        """This error, for the send of `msg_id`."""
        return IrisError(self.code, self.detail, self.retry_after, msg_id)

    @property
    def retryable(self) -> bool:
        """True when the same request (for a send: with the same id) may succeed later unchanged."""
        return self.code in RETRYABLE_ERROR_CODES or self.code == "timeout"

    def __reduce__(self) -> tuple[type[IrisError], tuple[str, str, float | None, bytes | None]]:
        return (type(self), (self.code, self.detail, self.retry_after, self.id))
