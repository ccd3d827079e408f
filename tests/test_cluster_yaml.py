"""cluster.yaml must pass Ray's own cluster-launcher schema, carry our labels, install a wheel
that exists, and fit the services file it mounts: every service's minimum places on the
fleet its min_workers start."""

from __future__ import annotations

import argparse
import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_fit import (
    ROOT,
    assert_minimums_place,
    pyproject_pins,
    ray_node,
    ray_node_labels,
    topology_of,
    unplaced_services,
)
from ray.autoscaler._private.util import prepare_config, validate_config

from heteroscale_ray.cli import build_parser
from heteroscale_ray.config import (
    DEFAULT_CATALOG,
    AffinityLevel,
    Role,
    ServicesConfig,
    TopologySpec,
    load_services,
)
from heteroscale_ray.config.topology import LABEL_GPU_TYPE, LABEL_S0, LABEL_S1, LABEL_S2

CLUSTER_YAML = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def gpu_node_types(config: dict) -> dict[str, dict]:
    return {
        name: nt
        for name, nt in config["available_node_types"].items()
        if nt["resources"].get("GPU", 0) > 0
    }


def worker_labels_arg(config: dict) -> str:
    """The value of `--labels` in the worker start command."""
    start = " ".join(config["worker_start_ray_commands"])
    found = re.search(r'--labels="([^"]+)"', start)
    assert found, "the worker start command sets no --labels"
    return found.group(1)


def cluster_topology(config: dict) -> TopologySpec:
    """The fleet `ray up` starts: min_workers hosts of every GPU node type, each labelled as the
    launcher labels it (node-type labels via RAY_OVERRIDE_LABELS, per-host ones via the start
    command's --labels with $(hostname) expanded), seen by the control plane."""
    nodes = [ray_node("head", 0, {})]
    for name, nt in gpu_node_types(config).items():
        gpus = int(nt["resources"]["GPU"])
        for i in range(nt.get("min_workers", 0)):
            hostname = f"ip-10-0-{len(nodes)}-{i}"
            arg = worker_labels_arg(config).replace("$(hostname)", hostname)
            nodes.append(ray_node(f"{name}-{i}", gpus, ray_node_labels(arg, nt["labels"], gpus)))
    return topology_of(nodes)


def head_start_args(config: dict) -> argparse.Namespace:
    """The head's `heteroscale start ...` command, parsed by the project's own CLI parser."""
    line = next(
        (c for c in config["head_start_ray_commands"] if c.startswith("heteroscale start")), None
    )
    assert line, "the head start commands do not run `heteroscale start`"
    return build_parser().parse_args(shlex.split(line)[1:])


def mounted_services_path(config: dict) -> Path:
    """The local file behind the head's `heteroscale start --services <remote path>`."""
    remote = head_start_args(config).services
    local = config["file_mounts"].get(remote)
    assert local, f"{remote} is not file-mounted"
    return ROOT / local


def test_passes_ray_schema(cluster_config: dict) -> None:
    # What `ray up` does before launching: merge the provider defaults, then validate.
    validate_config(prepare_config(copy.deepcopy(cluster_config)))


def test_schema_check_is_real(cluster_config: dict) -> None:
    broken = copy.deepcopy(cluster_config)
    broken["available_node_types"]["decode_a100"]["resources"]["GPU"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_gpu_workers_are_labelled(cluster_config: dict) -> None:
    gpu_types = []
    for name, node_type in gpu_node_types(cluster_config).items():
        labels = node_type["labels"]
        assert labels[LABEL_GPU_TYPE] in DEFAULT_CATALOG, name
        assert labels[LABEL_S1] and labels[LABEL_S2], name
        gpu_types.append(labels[LABEL_GPU_TYPE])
    assert len(set(gpu_types)) >= 2
    assert f"{LABEL_S0}=" in worker_labels_arg(cluster_config)
    assert any("heteroscale start" in c for c in cluster_config["head_start_ray_commands"])


def test_topology_is_what_the_node_types_describe(cluster_config: dict) -> None:
    topo = cluster_topology(cluster_config)
    types = gpu_node_types(cluster_config)
    hosts = list(topo.hosts())
    assert len(hosts) == sum(nt["min_workers"] for nt in types.values())
    for nt in types.values():
        mine = [
            (s2, s1, host)
            for s2, s1, _s0, host in hosts
            if host.gpu_type == nt["labels"][LABEL_GPU_TYPE]
        ]
        assert len(mine) == nt["min_workers"]
        for s2, s1, host in mine:
            assert (s2, s1) == (nt["labels"][LABEL_S2], nt["labels"][LABEL_S1])
            assert host.gpus == nt["resources"]["GPU"]
    assert len({s0 for _, _, s0, _ in hosts}) == len(hosts)  # one leaf per host, from $(hostname)


def test_every_service_minimum_places_on_the_cluster(cluster_config: dict) -> None:
    config = load_services(mounted_services_path(cluster_config))
    tick = assert_minimums_place(config, cluster_topology(cluster_config))
    assert {dg.service for dg in tick.result.state.dgs} == {s.name for s in config.services}


def test_the_l20_h20_services_place_nothing_here(cluster_config: dict) -> None:
    # What cluster.yaml used to mount: asks for GPU types this fleet does not have.
    config = load_services(ROOT / "examples" / "services.yaml")
    topo = cluster_topology(cluster_config)
    assert unplaced_services(config, topo) == {s.name: set(Role) for s in config.services}


def test_s1_affinity_places_nothing_across_the_two_placement_groups(
    cluster_config: dict,
) -> None:
    # Prefill and decode types live in different S1s here; a DG needing both in one S1 fails.
    config = load_services(mounted_services_path(cluster_config))
    chat = config.by_name()["chat"].model_copy(update={"affinity": AffinityLevel.S1})
    s1_only = ServicesConfig(gpus=list(config.gpus), services=[chat])
    assert unplaced_services(s1_only, cluster_topology(cluster_config)) == {"chat": set(Role)}


def test_setup_installs_the_wheel_of_this_version(cluster_config: dict) -> None:
    version, ray_version = pyproject_pins()
    wheel = f"heteroscale_ray-{version}-py3-none-any.whl"
    setup = " ".join(cluster_config["setup_commands"])
    assert f'"ray[serve]=={ray_version}"' in setup
    installed = re.search(r"pip install .*?(\S+\.whl)", setup)
    assert installed and installed.group(1).endswith("/" + wheel), setup
    assert cluster_config["file_mounts"].get(installed.group(1)) == f"./dist/{wheel}"
    assert "git+" not in setup


def test_head_starts_the_control_plane_on_the_mounted_file(cluster_config: dict) -> None:
    args = head_start_args(cluster_config)
    assert args.command == "start" and args.address == "auto" and not args.advisory
    path = mounted_services_path(cluster_config)
    assert path.is_file() and path.name == "services-aws.yaml"
