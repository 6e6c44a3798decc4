"""How the nodes that others see dead look from where meshctl runs: tried at their admin ports, all at once.

`meshctl status` names each so (not running, hung, not answering, not reachable, answers) and advises what fits;
see `iris_mesh.sockets.reach` for what each means.
"""

from __future__ import annotations

from typing import Any

from iris_mesh.cli._target import CtlError, Target, in_threads
from iris_mesh.sockets import AdminError, reach

__all__ = ["reach_from_here"]

# How long a try waits for the connection, then as long for the answer: the handshake and `status` take about three
# round trips, so a node a continent away (200 ms) that answers is not taken for a hung one.
_REACH_TIMEOUT_S = 1.0
_MOST_AT_ONCE = 16  # tries going on at once (each has its own sockets): a site of hundreds of edges cut off


def reach_from_here(target: Target, asked: str, nodes: list[str]) -> dict[str, str]:
    """node -> how it looks from here, for each of `nodes` whose admin address node `asked` (one that answered)
    knows. A node with no address, or that could not be tried, is left out."""
    endpoint = dict(target.endpoints()).get(asked)
    if endpoint is None:
        return {}
    try:
        view: dict[str, Any] = target.request(endpoint, "nodes")
    except (CtlError, AdminError):
        return {}
    addresses = {row["node_id"]: f"tcp://{row['host']}:{row['admin_port']}" for row in view.get("nodes", [])
                 if isinstance(row, dict) and row.get("node_id") in nodes and row.get("host") and row.get("admin_port")}
    if not addresses:
        return {}

    def tried(node: str) -> str | None:
        try:
            return reach(addresses[node], target.keys, node, _REACH_TIMEOUT_S)
        except Exception:  # a try that fails (out of sockets, say) says nothing of the node: the status goes on
            return None

    found = dict(zip(addresses, in_threads(tried, list(addresses), at_once=_MOST_AT_ONCE)))
    return {node: kind for node, kind in found.items() if kind is not None}
