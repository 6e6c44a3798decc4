"""Log setup for a node process: loguru, one line per event, to stderr."""

from __future__ import annotations

import sys

from loguru import logger

__all__ = ["setup_logging"]


def setup_logging(node_id: str, level: str) -> None:
    logger.remove()
    logger.configure(extra={"node": node_id})
    logger.add(
        sys.stderr,
        level=level,
        format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} [{extra[node]}] {message}",
        backtrace=False,
        diagnose=False,
        enqueue=False,
    )
