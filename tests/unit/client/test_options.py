"""Tests for iris_mesh.client._options and _errors: invariants checked up front, error codes closed."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from iris_mesh.client import ERROR_CODES, LOCAL_ERROR_CODES, ClientOptions, IrisError
from iris_mesh.messaging._protocol import RETRYABLE_ERROR_CODES


def test_defaults_follow_the_protocol() -> None:
    options = ClientOptions()
    assert options.ping_interval_s == 10.0 and options.send_timeout_s == 30.0 and options.dedup_window == 10_000


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"ping_interval_s": 11.0}, "ping_interval_s"),
        ({"ping_interval_s": 10.0, "pong_timeout_s": 20.0}, "idle timeout"),
        ({"send_timeout_s": 600.0}, "second copy"),
        ({"retry_initial_s": 3.0}, "retry_initial_s"),
        ({"reconnect_initial_s": 5.0}, "reconnect_initial_s"),
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"request_timeout_s": float("nan")}, "request_timeout_s"),
        ({"dedup_window": 0}, "dedup_window"),
        ({"sync_hold_messages": True}, "sync_hold_messages"),
        ({"client_name": ""}, "client_name"),
    ],
)
def test_contradictions_are_refused_with_the_option_named(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ClientOptions(**changes)


def test_iris_error_codes() -> None:
    assert set(LOCAL_ERROR_CODES) == {"closed", "timeout", "login_lost"} and not set(LOCAL_ERROR_CODES) & set(ERROR_CODES)
    error = IrisError("rate_limited", "slow down", retry_after=0.5)
    assert (error.code, error.detail, error.retry_after) == ("rate_limited", "slow down", 0.5)
    assert str(error) == "rate_limited: slow down"
    assert error.retryable and IrisError("timeout", "x").retryable and not IrisError("auth_failed", "x").retryable
    assert all(IrisError(code, "x").retryable for code in RETRYABLE_ERROR_CODES)
    with pytest.raises(ValueError):
        IrisError("made_up", "x")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.detail, copy.retry_after) == ("rate_limited", "slow down", 0.5)
