"""Tests for iris_mesh.messaging._tokens: round trip, each refusal reason, canonical text only."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iris_mesh.messaging._tokens import DEFAULT_TOKEN_TTL_S, TokenError, issue_token, token_secret, verify_token

SECRET = token_secret(b"test-cookie")
EXPIRY = 2_000_000_000


def reason(token: object, user: str = "alice", now_s: float = EXPIRY - 10, secret: bytes = SECRET) -> str:
    with pytest.raises(TokenError) as info:
        verify_token(secret, token, user, now_s)
    return info.value.reason


def test_a_token_logs_its_user_in_until_it_expires() -> None:
    token = issue_token(SECRET, "alice", EXPIRY)
    verify_token(SECRET, token, "alice", EXPIRY - 1)
    verify_token(SECRET, token, "alice", EXPIRY - 0.001)
    assert reason(token, now_s=EXPIRY) == "expired"
    assert reason(token, now_s=EXPIRY + 3600) == "expired"


def test_a_token_is_for_one_user_only() -> None:
    assert reason(issue_token(SECRET, "alice", EXPIRY), user="bob") == "wrong_user"
    assert reason(issue_token(SECRET, "alice", EXPIRY), user="Alice") == "wrong_user"


def test_a_token_of_another_cluster_has_a_bad_signature() -> None:
    token = issue_token(token_secret(b"other-cookie"), "alice", EXPIRY)
    assert reason(token) == "bad_signature"
    # The signature is checked first: a forged token learns nothing about user or expiry.
    assert reason(token, user="bob", now_s=EXPIRY + 1) == "bad_signature"


def test_changing_any_signed_field_breaks_the_signature() -> None:
    version, user, expiry, mac = issue_token(SECRET, "alice", EXPIRY).split(".")
    forged_user = issue_token(SECRET, "mallory", EXPIRY).split(".")[1]
    assert reason(".".join([version, forged_user, expiry, mac]), user="mallory") == "bad_signature"
    assert reason(".".join([version, user, str(EXPIRY + 1), mac])) == "bad_signature"
    flipped = ("B" if mac[0] == "A" else "A") + mac[1:]
    assert reason(".".join([version, user, expiry, flipped])) == "bad_signature"


def test_token_text_is_shell_safe_and_has_the_documented_shape() -> None:
    token = issue_token(SECRET, "a.b@c-d_e", EXPIRY)
    assert re.fullmatch(r"v1\.[A-Za-z0-9_-]+\.2000000000\.[A-Za-z0-9_-]{43}", token)


def _valid_parts() -> list[str]:
    return issue_token(SECRET, "alice", EXPIRY).split(".")


@pytest.mark.parametrize(
    "token",
    [
        None,
        b"v1.YWxpY2U.2000000000.x",
        "",
        "v1",
        "v1.YWxpY2U.2000000000",
        "v2." + ".".join(_valid_parts()[1:]),
        ".".join(_valid_parts()) + ".extra",
        ".".join(_valid_parts()) + "=",  # padding is not canonical
        ".".join(_valid_parts()[:3]) + "." + _valid_parts()[3][:-1],  # MAC one char short
        "v1.YWxpY2U=." + ".".join(_valid_parts()[2:]),
        "v1.YWxpY2V." + ".".join(_valid_parts()[2:]),  # same bytes, non-zero padding bits
        "v1.YWxp+2U." + ".".join(_valid_parts()[2:]),  # standard base64, not base64url
        "v1.YWxpY2U.02000000000." + _valid_parts()[3],  # leading zero
        "v1.YWxpY2U.+2000000000." + _valid_parts()[3],
        "v1.YWxpY2U.-1." + _valid_parts()[3],
        "v1.YWxpY2U.2e9." + _valid_parts()[3],
        "v1.YWxpY2U.12345678901234567." + _valid_parts()[3],  # over 16 digits
        "v1.YWwgaWNl.2000000000." + _valid_parts()[3],  # "al ice" is no user name
        "v1.__8.2000000000." + _valid_parts()[3],  # not UTF-8
        "v1.YWxpY2U.2000000000." + "A" * 600,
        "v1.YWxpY2U .2000000000." + _valid_parts()[3],
    ],
)
def test_anything_but_the_canonical_form_is_malformed(token: object) -> None:
    assert reason(token) == "malformed"


@given(
    secret=st.binary(min_size=1, max_size=64),
    user=st.from_regex(r"\A[A-Za-z0-9_.@-]{1,64}\Z"),
    expiry=st.integers(min_value=0, max_value=10**16 - 1),
)
def test_round_trip(secret: bytes, user: str, expiry: int) -> None:
    token = issue_token(secret, user, expiry)
    verify_token(secret, token, user, expiry - 1)
    assert len(token) <= 512


@given(st.text(max_size=200))
def test_random_text_is_refused_with_a_token_error_only(text: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, text, "alice", 0)


@pytest.mark.parametrize(
    ("secret", "user", "expiry"),
    [
        (b"", "alice", EXPIRY),
        (SECRET, "", EXPIRY),
        (SECRET, "al ice", EXPIRY),
        (SECRET, "x" * 65, EXPIRY),
        (SECRET, "alice", -1),
        (SECRET, "alice", True),
        (SECRET, "alice", 1.5),
        (SECRET, "alice", 10**16),
    ],
)
def test_issue_refuses_bad_arguments(secret: bytes, user: str, expiry: int) -> None:
    with pytest.raises(ValueError):
        issue_token(secret, user, expiry)


def test_the_signing_key_is_derived_from_the_cookie_never_the_cookie_itself() -> None:
    assert len(SECRET) == 32
    assert SECRET == token_secret(b"test-cookie")
    assert SECRET != token_secret(b"test-cookie2")
    assert b"test-cookie" not in SECRET
    token = issue_token(SECRET, "alice", EXPIRY)
    assert reason(token, secret=b"test-cookie") == "bad_signature"
    with pytest.raises(ValueError):
        token_secret(b"")


def test_verify_refuses_an_empty_secret() -> None:
    with pytest.raises(ValueError):
        verify_token(b"", issue_token(SECRET, "alice", EXPIRY), "alice", 0)


def test_default_ttl_is_thirty_days() -> None:
    assert DEFAULT_TOKEN_TTL_S == 30 * 24 * 3600
