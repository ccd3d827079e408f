"""Topology and placement core (pure: no Ray, no clock, no I/O).

The paper's federated pre-scheduling layer: a switch-tree view of the cluster, RDMA subgroup
classes, Deployment Groups, and the placement cycle that turns target instance counts into
GPUs on hosts.
"""

from heteroscale_ray.topology.capacity import CapacityError, FreeCapacity
from heteroscale_ray.topology.dg import DeploymentGroup, Instance, next_dg_id, role_counts
from heteroscale_ray.topology.graph import (
    CLUSTER_WIDE,
    ROOT,
    ClusterGraph,
    Domain,
    HostInfo,
)
from heteroscale_ray.topology.placement import ScaleRequest, place_dg, plan_cycle
from heteroscale_ray.topology.plan import (
    Action,
    AddInstances,
    CreateDG,
    DeleteDG,
    PlacementPlan,
    RemoveInstances,
    Unplaced,
    UnplacedReason,
    describe_plan,
)
from heteroscale_ray.topology.subgroups import (
    SubgroupClass,
    Subgroups,
    classify_s1,
    classify_s2,
    classify_topology,
)
from heteroscale_ray.topology.view import domain_owners, without_hosts

__all__ = [
    "CLUSTER_WIDE",
    "ROOT",
    "Action",
    "AddInstances",
    "CapacityError",
    "ClusterGraph",
    "CreateDG",
    "DeleteDG",
    "DeploymentGroup",
    "Domain",
    "FreeCapacity",
    "HostInfo",
    "Instance",
    "PlacementPlan",
    "RemoveInstances",
    "ScaleRequest",
    "SubgroupClass",
    "Subgroups",
    "Unplaced",
    "UnplacedReason",
    "classify_s1",
    "classify_s2",
    "classify_topology",
    "describe_plan",
    "domain_owners",
    "next_dg_id",
    "place_dg",
    "plan_cycle",
    "role_counts",
    "without_hosts",
]
