"""Integration fixtures: real node processes on 127.0.0.1, stopped by pid even when a test fails."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from support.nodes import LocalCluster


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()
