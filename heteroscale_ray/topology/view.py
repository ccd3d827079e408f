"""The cluster view a pre-scheduler rebuilds every cycle: healthy hosts only, stable owners.

Pure functions over `TopologySpec` and host names; the actor reads node labels, node liveness
and GpuNode health, these decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from heteroscale_ray.config import TopologySpec
from heteroscale_ray.topology.graph import ROOT


def without_hosts(spec: TopologySpec, gone: set[str]) -> TopologySpec:
    """The topology minus some hosts (and any switch left empty), validated again."""
    data = spec.model_dump()
    pods = []
    for s2 in data["big_pods"]:
        minis = []
        for s1 in s2["mini_pods"]:
            leaves = [
                {**s0, "hosts": [h for h in s0["hosts"] if h["name"] not in gone]}
                for s0 in s1["leaves"]
            ]
            leaves = [s0 for s0 in leaves if s0["hosts"]]
            if leaves:
                minis.append({**s1, "leaves": leaves})
        if minis:
            pods.append({**s2, "mini_pods": minis})
    data["big_pods"] = pods
    if data.get("sub_clusters"):
        alive = {p["name"] for p in pods}
        data["sub_clusters"] = {
            k: [b for b in v if b in alive] for k, v in data["sub_clusters"].items()
        }
        data["sub_clusters"] = {k: v for k, v in data["sub_clusters"].items() if v}
    return TopologySpec.model_validate(data)


def domain_owners(spec: TopologySpec, previous: Mapping[str, str]) -> dict[str, str]:
    """Domain name (S1, S2 and the cluster-wide root) -> the sub-cluster that owns its DGs.

    Built from the topology *before* unhealthy hosts are removed and merged over the previous
    mapping, so a domain that briefly vanishes (all its hosts miss a report, or its Ray nodes
    are not alive for a moment) keeps its owner: a DG never moves to another sub-cluster
    scheduler, which would delete and redeploy it, because of a transient outage. The root's
    DGs (affinity `none`) go to the first sub-cluster once and stay: taken as the first name
    each cycle, they moved whenever a big-pod whose name sorts earlier joined.
    """
    out = dict(previous)
    sub_of = spec.sub_cluster_of()
    for s2 in spec.big_pods:
        sc = sub_of[s2.name]
        out[s2.name] = sc
        for s1 in s2.mini_pods:
            out[s1.name] = sc
    if ROOT not in out and sub_of:
        out[ROOT] = min(sub_of.values())
    return out


def lost_hosts(
    placed: Iterable[str], alive: Mapping[str, str], last_seen: Mapping[str, str]
) -> frozenset[str]:
    """Hosts the DG state places instances on whose Ray node is gone, so those instances are.

    ``alive`` maps each host on a live Ray node to that node's id; ``last_seen`` the node id
    each host had when its instances were last accounted for. A placed host is lost when no
    live node carries it, or when it is back on a *different* node (it died and was re-added
    between two looks: what ran on the old node died with it). A host that is alive but slow
    to answer is not lost: its GPUs leave the placement view, its instances stay.
    """
    return frozenset(
        h for h in placed if h not in alive or (h in last_seen and last_seen[h] != alive[h])
    )
