"""Login tokens: an HMAC-SHA256 signature over (version, user, expiry), as text safe to paste in a shell.

Token text (docs/PROTOCOL.md, "Logging in")::

    v1.<user>.<expiry>.<mac>

    user    the user name, UTF-8, base64url without padding (names may hold '.')
    expiry  Unix time in seconds after which the token is refused, decimal,
            no sign, no leading zeros
    mac     HMAC-SHA256(key, canonical), base64url without padding (43 chars)
    canonical = b"iris-mesh token\\x00v1\\x00" + user + b"\\x00" + expiry (ASCII)

Every character is in [A-Za-z0-9_.-]. There is one text per (user, expiry,
key): a token that decodes to valid fields but is not in that canonical form
is malformed, so no two texts carry the same signature.

The key is `token_secret(cookie)`, never the cookie itself: whoever holds the
cluster cookie can mint tokens for any user (that is `meshctl token`), and
changing the cookie revokes every token at once. There is no other revocation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Final, Literal, TypeAlias

from ._protocol import MAX_TOKEN_CHARS, is_valid_user

__all__ = ["DEFAULT_TOKEN_TTL_S", "TokenError", "TokenErrorReason", "issue_token", "token_secret", "verify_token"]

# What `meshctl token USER` uses without --ttl.
DEFAULT_TOKEN_TTL_S: Final = 30 * 24 * 3600

_VERSION = "v1"
_CANONICAL_PREFIX = b"iris-mesh token\x00" + _VERSION.encode() + b"\x00"
# Distinct from every other derivation from the cookie (see sockets/_curve.py).
_SECRET_CONTEXT = b"iris-mesh login token signing key v1"
_MAC_BYTES = 32
# Up to year 316 million: expiries are plain seconds, never unbounded text.
_MAX_EXPIRY_DIGITS = 16
_EXPIRY_RE = re.compile(r"0|[1-9][0-9]{0,%d}" % (_MAX_EXPIRY_DIGITS - 1))
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")

TokenErrorReason: TypeAlias = Literal["malformed", "bad_signature", "wrong_user", "expired"]


class TokenError(ValueError):
    """A token that does not log this user in; `reason` says why."""

    __slots__ = ("reason",)

    def __init__(self, reason: TokenErrorReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def token_secret(cookie: bytes) -> bytes:
    """The 32-byte token signing key derived from the cluster cookie (one-way, own context)."""
    if not isinstance(cookie, bytes) or not cookie:
        raise ValueError("the cluster cookie is empty")
    return hmac.new(cookie, _SECRET_CONTEXT, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Decode canonical unpadded base64url, or None."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return raw if _b64(raw) == text else None  # refuses non-zero padding bits


def _mac(secret: bytes, user: str, expires_at_s: int) -> bytes:
    canonical = _CANONICAL_PREFIX + user.encode() + b"\x00" + str(expires_at_s).encode()
    return hmac.new(secret, canonical, hashlib.sha256).digest()


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("the token secret is empty (derive it with token_secret(cookie))")


def issue_token(secret: bytes, user: str, expires_at_s: int) -> str:
    """A token that logs `user` in until Unix second `expires_at_s`; ValueError for a bad user or expiry."""
    _check_secret(secret)
    if not is_valid_user(user):
        raise ValueError(f"{user!r} is not a user name (1-64 of [A-Za-z0-9_.@-])")
    if (
        not isinstance(expires_at_s, int)
        or isinstance(expires_at_s, bool)
        or not _EXPIRY_RE.fullmatch(str(expires_at_s))
    ):
        raise ValueError(f"expires_at_s must be a non-negative integer of at most {_MAX_EXPIRY_DIGITS} digits")
    mac = _mac(secret, user, expires_at_s)
    return f"{_VERSION}.{_b64(user.encode())}.{expires_at_s}.{_b64(mac)}"


def _parse(token: object) -> tuple[str, int, bytes]:
    """(user, expiry, mac) of a well-formed token, else TokenError("malformed")."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise TokenError("malformed", "the token is not text of a token's length")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _VERSION:
        raise TokenError("malformed", f"the token is not of the form {_VERSION}.<user>.<expiry>.<mac>")
    user_raw, mac = _unb64(parts[1]), _unb64(parts[3])
    if user_raw is None or mac is None or len(mac) != _MAC_BYTES:
        raise TokenError("malformed", "the token's user or signature is not canonical base64url")
    try:
        user = user_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError("malformed", "the token's user is not UTF-8") from None
    if not is_valid_user(user):
        raise TokenError("malformed", "the token's user is not a user name")
    if not _EXPIRY_RE.fullmatch(parts[2]):
        raise TokenError("malformed", "the token's expiry is not a plain decimal number of seconds")
    return user, int(parts[2]), mac


def verify_token(secret: bytes, token: object, user: str, now_s: float) -> None:
    """Return if `token` logs `user` in at Unix time `now_s`, else raise TokenError (signature checked first)."""
    _check_secret(secret)
    token_user, expires_at_s, mac = _parse(token)
    if not hmac.compare_digest(mac, _mac(secret, token_user, expires_at_s)):
        raise TokenError("bad_signature", "the token was not signed with this cluster's key")
    if token_user != user:
        raise TokenError("wrong_user", f"the token is for user {token_user!r}, not {user!r}")
    if now_s >= expires_at_s:
        raise TokenError("expired", f"the token expired at Unix time {expires_at_s}")
