"""A scripted conversation against the running local cluster (`make run` first): online, offline, reconnect."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from iris_mesh.client import Client, Message
from iris_mesh.messaging import issue_token, token_secret


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


# The cluster `make run` started: its name is the config's (iris) unless IRIS_MESH_CLUSTER overrides it.
CLUSTER = os.environ.get("IRIS_MESH_CLUSTER", "iris")


def received(who: str, message: Message | None, expected: bytes, problems: list[str]) -> None:
    """Print what `who` received, and note it among `problems` unless it is `expected`."""
    if message is None:
        print(f"{who + ':':6} nothing?!")
        problems.append(f"{who} received nothing, expected {expected.decode()!r}")
        return
    print(f"{who + ':':6} received {message.body.decode()!r} from {message.sender}")
    if message.body != expected:
        problems.append(f"{who} received {message.body.decode()!r}, expected {expected.decode()!r}")


def main() -> int:
    cookie_file = Path("var/cookie")
    if not cookie_file.exists():
        print("no var/cookie: start the local cluster with `make run` first", file=sys.stderr)
        return 2
    secret = token_secret(cookie_file.read_bytes().strip())
    problems: list[str] = []

    def token(user: str) -> str:
        return issue_token(secret, user, int(time.time()) + 3600)

    step("alice connects to edge1 and bob to edge2 (found by mDNS), and both log in")
    alice = Client.connect(cluster=CLUSTER, edge="edge1")
    alice.login("alice", token("alice"))
    bob = Client.connect(cluster=CLUSTER, edge="edge2")
    bob.login("bob", token("bob"))
    print(f"alice is on {alice.edge}, bob is on {bob.edge}")

    step("online: alice -> bob, across the two edges")
    # `delivered` means bob's app got it (bob's SDK acks once receive() returns it), so send asynchronously.
    pending = alice.send_async("bob", b"hi bob, are you there?")
    received("bob", bob.receive(timeout=10.0), b"hi bob, are you there?", problems)
    print(f"alice: sent, status {pending.result(timeout=30).status!r}")
    pending = bob.send_async("alice", b"yes! hi alice")
    received("alice", alice.receive(timeout=10.0), b"yes! hi alice", problems)
    print(f"bob:   replied, status {pending.result(timeout=30).status!r}")

    step("offline: bob logs off; alice sends three messages, which wait in bob's inbox (3 replicas, fsync'd)")
    bob.close()
    for text in ("first", "second", "third"):
        result = alice.send("bob", text.encode())
        print(f"alice: sent {text!r}, status {result.status!r}")

    step("idempotent retry: alice resends the last message with the same id")
    again = alice.send("bob", b"third", id=result.id)
    print(f"alice: resent, status {again.status!r} (no second copy is made)")

    step("reconnect: bob logs in again, on edge1 this time, and gets his inbox in order")
    bob = Client.connect(cluster=CLUSTER, edge="edge1")
    bob.login("bob", token("bob"))
    for text in (b"first", b"second", b"third"):
        received("bob", bob.receive(timeout=10.0), text, problems)
    if (extra := bob.receive(timeout=1.0)) is not None:
        problems.append(f"bob received {extra.body.decode()!r} after his inbox (a second copy?)")

    alice.close()
    bob.close()
    if problems:
        step("FAILED: " + "; ".join(problems))
        return 1
    step("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
