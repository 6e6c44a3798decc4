"""Command-line tools: `iris-mesh` (run a node) and `meshctl` (inspect and operate a cluster)."""
