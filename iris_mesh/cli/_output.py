"""How meshctl prints: tables, --json, and values that may be bytes."""

from __future__ import annotations

import argparse
import json
from typing import Any

from iris_mesh.cli._target import EXIT_CHECK_FAILED, CtlError

__all__ = ["checked", "emit", "jsonable", "table_text", "value_text"]


def table_text(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(jsonable(data), indent=2, sort_keys=True) if args.json else text)


def checked(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        raise CtlError(f"{reply.get('error', 'error')}: {reply.get('detail', '')}", EXIT_CHECK_FAILED)
    return reply


def value_text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return "0x" + value.hex()
    return str(value)


def jsonable(data: Any) -> Any:
    if isinstance(data, bytes):
        return value_text(data)
    if isinstance(data, dict):
        return {k: jsonable(v) for k, v in data.items()}
    if isinstance(data, list):
        return [jsonable(v) for v in data]
    return data
