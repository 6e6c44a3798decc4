"""Storage: the only package that imports rocksdict."""

from __future__ import annotations

from iris_mesh.store._db import TABLES, Database, StoreError
from iris_mesh.store._meta import NodeMeta

__all__ = ["Database", "NodeMeta", "StoreError", "TABLES"]
