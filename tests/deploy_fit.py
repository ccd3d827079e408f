"""Shared by the deploy-file tests: a fleet described by a deploy file, as the control plane
would see it, and its first control tick.

Node labels go through Ray's own merge (`ray start --labels` plus the RAY_OVERRIDE_LABELS
the cluster launcher, or our KubeRay Pods, set), then through the project's
`topology_from_ray_nodes`, the path `heteroscale start` takes on a live cluster.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from ray._private.label_utils import parse_node_labels_string
from ray._private.ray_constants import LABELS_ENVIRONMENT_VARIABLE
from ray._private.resource_and_label_spec import ResourceAndLabelSpec

from heteroscale_ray.config import Role, ServicesConfig, TopologySpec, topology_from_ray_nodes
from heteroscale_ray.control import (
    ControlLoop,
    Desired,
    HeteroScaleAutoscaler,
    LoopState,
    Observation,
    StepResult,
    TickInput,
)
from heteroscale_ray.policy import Signals
from heteroscale_ray.topology import ClusterGraph, role_counts

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_790_000_000.0  # any fixed epoch time: the first tick does not depend on it


def pyproject_pins() -> tuple[str, str]:
    """(package version, pinned Ray version) from pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', text, re.M)
    ray_pin = re.search(r'"ray\[serve\]==([^"]+)"', text)
    assert version and ray_pin, "pyproject.toml lost its version or its ray[serve] pin"
    return version.group(1), ray_pin.group(1)


def ray_node_labels(labels_arg: str, override: Mapping[str, str], gpus: int) -> dict[str, str]:
    """The labels a node started with `ray start --labels=<labels_arg>` and
    RAY_OVERRIDE_LABELS=<override as JSON> ends up with, resolved by Ray itself."""
    env = {LABELS_ENVIRONMENT_VARIABLE: json.dumps(dict(override))} if override else {}
    with mock.patch.dict(os.environ, env):
        spec = ResourceAndLabelSpec(
            num_cpus=1,
            num_gpus=gpus,
            memory=1 << 30,
            object_store_memory=1 << 30,
            labels=parse_node_labels_string(labels_arg),
        ).resolve(is_head=False, node_ip_address="10.0.0.1")
    return dict(spec.labels)


def ray_node(node_id: str, gpus: int, labels: Mapping[str, str]) -> dict:
    """One entry as `ray.nodes()` returns it, the input of `topology_from_ray_nodes`."""
    return {"NodeID": node_id, "Alive": True, "Resources": {"GPU": gpus}, "Labels": dict(labels)}


def topology_of(nodes: list[dict]) -> TopologySpec:
    return topology_from_ray_nodes(nodes)


@dataclass(frozen=True)
class FirstTick:
    desired: dict[str, Desired]
    result: StepResult


def first_tick(config: ServicesConfig, topology: TopologySpec) -> FirstTick:
    """What the control plane does on its first period: no instances and no metrics yet, so
    each service starts at its minimums, and one control tick places them."""
    graph = ClusterGraph.from_topology(topology, config.catalog)
    observations = {s.name: Observation(s.name, Signals(observed_at=NOW)) for s in config.services}
    desired = HeteroScaleAutoscaler(config.services, config.catalog).desire(NOW, observations)
    tick = TickInput(NOW, desired, observations, config.by_name(), graph)
    return FirstTick(desired, ControlLoop(catalog=config.catalog).step(LoopState(), tick))


def assert_minimums_place(config: ServicesConfig, topology: TopologySpec) -> FirstTick:
    """Every service's first target covers its minimums and places whole, on allowed GPU types,
    with no host's GPUs handed out twice."""
    tick = first_tick(config, topology)
    assert tick.result.plan.unplaced == (), [u.detail for u in tick.result.plan.unplaced]
    for spec in config.services:
        want = tick.desired[spec.name]
        assert want.prefill >= spec.prefill.min_instances, spec.name
        assert want.decode >= spec.decode.min_instances, spec.name
        assert want.prefill + want.decode > 0, spec.name
        assert role_counts(tick.result.state.dgs, spec.name) == (want.prefill, want.decode)
    hosts = {h.name: h for *_, h in topology.hosts()}
    taken: list[tuple[str, int]] = []
    for dg in tick.result.state.dgs:
        spec = config.by_name()[dg.service]
        for inst in dg.instances:
            host = hosts[inst.host]
            assert host.gpu_type in spec.role(inst.role).gpu_types, (dg.dg_id, inst)
            assert len(inst.gpus) == spec.role(inst.role).gpus_per_instance, (dg.dg_id, inst)
            assert all(0 <= g < host.gpus for g in inst.gpus), (dg.dg_id, inst)
            taken += [(inst.host, g) for g in inst.gpus]
    assert len(taken) == len(set(taken)), f"a GPU handed out twice: {sorted(taken)}"
    return tick


def unplaced_services(config: ServicesConfig, topology: TopologySpec) -> dict[str, set[Role]]:
    """Services (and roles) whose first target did not place."""
    out: dict[str, set[Role]] = {}
    for u in first_tick(config, topology).result.plan.unplaced:
        out.setdefault(u.service, set()).add(u.role)
    return out
