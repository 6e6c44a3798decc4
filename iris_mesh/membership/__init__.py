"""Membership: discovery (the only importer of zeroconf), failure detection, partition guard, placement."""

from __future__ import annotations

from iris_mesh.membership._discovery import SERVICE_TYPE, Discovery, DiscoveryError, browse_cluster, browse_edges
from iris_mesh.membership._failure_detector import FailureDetector, PeerState, PeerStatus, Transition
from iris_mesh.membership._partition_guard import GuardDecision, PartitionGuard
from iris_mesh.membership._peer import CardError, PeerCard
from iris_mesh.membership._placement import Placement, rendezvous_replicas
from iris_mesh.membership._service import MembershipService

__all__ = [
    "CardError",
    "Discovery",
    "DiscoveryError",
    "FailureDetector",
    "GuardDecision",
    "MembershipService",
    "PartitionGuard",
    "PeerCard",
    "PeerState",
    "PeerStatus",
    "Placement",
    "SERVICE_TYPE",
    "Transition",
    "browse_cluster",
    "browse_edges",
    "rendezvous_replicas",
]
