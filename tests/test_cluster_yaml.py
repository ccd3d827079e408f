"""cluster.yaml must pass Ray's own cluster-launcher schema and carry our labels."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from heteroscale_ray.config import DEFAULT_CATALOG

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


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
    for name, node_type in cluster_config["available_node_types"].items():
        if node_type["resources"].get("GPU", 0) == 0:
            continue
        labels = node_type["labels"]
        assert labels["heteroscale.io/gpu-type"] in DEFAULT_CATALOG, name
        assert labels["heteroscale.io/s1"] and labels["heteroscale.io/s2"], name
        gpu_types.append(labels["heteroscale.io/gpu-type"])
    assert len(set(gpu_types)) >= 2
    start = " ".join(cluster_config["worker_start_ray_commands"])
    assert "heteroscale.io/s0=" in start
    assert any("heteroscale start" in c for c in cluster_config["head_start_ray_commands"])
