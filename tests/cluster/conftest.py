"""Fixtures for tests/cluster: test hosts in network namespaces (see _hosts.py).

``make_hosts(n)`` returns a ready TestHosts; everything it made is removed
when the test ends, passes, fails or is interrupted. Without root or
permission for `ip netns add` the test is skipped, unless
IRIS_MESH_REQUIRE_NETNS=1, which turns that skip into a failure (for CI,
where a silent skip would hide a broken runner).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The test modules here import the helpers as `_hosts`; make that work under
# --import-mode=importlib too, which does not put this directory on sys.path.
_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:
    sys.path.insert(0, _here)

from _hosts import HostsUnavailable, TestHosts, check_environment, sweep_stale_namespaces  # noqa: E402

REQUIRE_ENV = "IRIS_MESH_REQUIRE_NETNS"


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(f"cluster tests skipped: {reason}")


@pytest.fixture(scope="session")
def netns_ready() -> None:
    """Skip unless we can make test hosts; once per session, sweep sets left by dead runs."""
    try:
        check_environment()
        sweep_stale_namespaces()
        with TestHosts(1):  # the real thing once: netns, bridge, veth
            pass
    except HostsUnavailable as exc:
        _unavailable(str(exc))


@pytest.fixture
def make_hosts(netns_ready: None) -> Iterator[Callable[..., TestHosts]]:
    """Factory: ``hosts = make_hosts(3)``; keyword arguments go to TestHosts."""
    made: list[TestHosts] = []

    def factory(n: int, **kwargs: object) -> TestHosts:
        hosts = TestHosts(n, **kwargs)  # type: ignore[arg-type]
        try:
            hosts.__enter__()
        except HostsUnavailable as exc:
            _unavailable(str(exc))
        made.append(hosts)
        return hosts

    try:
        yield factory
    finally:
        errors: list[BaseException] = []
        for hosts in reversed(made):
            try:
                hosts.close()
            except BaseException as exc:  # close the others anyway (even on Ctrl-C), then raise
                errors.append(exc)
        for exc in errors:
            if isinstance(exc, KeyboardInterrupt):
                raise exc
        if errors:
            raise errors[0]
