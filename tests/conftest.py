"""Shared fixtures. Ray tests share ONE local multi-node cluster per session (about 10-20 s
to start) and always shut it down; they are marked ``slow`` and run in CI too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from heteroscale_ray.config import TopologySpec, parse_model

ROOT = Path(__file__).resolve().parents[1]
# The full public traces, beside a source checkout (CI has them). Most tests use the samples
# packaged in heteroscale_ray/traces/data instead; the few that need a full file skip without
# it. Point HETEROSCALE_SHARED_TRACES at a missing folder to run the suite as a plain clone
# would.
SHARED_TRACES_ENV = "HETEROSCALE_SHARED_TRACES"
TRACES = Path(os.environ.get(SHARED_TRACES_ENV) or ROOT.parent / "shared" / "data" / "traces")


def shared_trace(name: str) -> Path:
    """A full trace file from ../shared/data/traces; skips the calling test when it is absent."""
    path = TRACES / name
    if not path.is_file():
        pytest.skip(
            f"../shared is missing: the full trace {path} is not there (a plain clone has only "
            "the packaged samples)"
        )
    return path


# Two GPU types in two S1 domains under one S2: enough to see label pinning and affinity.
TEST_TOPOLOGY = {
    "big_pods": [
        {
            "name": "s2-a",
            "mini_pods": [
                {
                    "name": "s1-a0",
                    "leaves": [
                        {
                            "name": "s0-a0-0",
                            "hosts": [{"name": "a0-h20", "gpu_type": "H20", "gpus": 4}],
                        },
                        {
                            "name": "s0-a0-1",
                            "hosts": [{"name": "a0-l20", "gpu_type": "L20", "gpus": 4}],
                        },
                    ],
                },
                {
                    "name": "s1-a1",
                    "leaves": [
                        {
                            "name": "s0-a1-0",
                            "hosts": [{"name": "a1-h20", "gpu_type": "H20", "gpus": 4}],
                        },
                        {
                            "name": "s0-a1-1",
                            "hosts": [{"name": "a1-l20", "gpu_type": "L20", "gpus": 4}],
                        },
                    ],
                },
            ],
        }
    ]
}


@pytest.fixture(scope="session")
def test_topology() -> TopologySpec:
    return parse_model(TopologySpec, TEST_TOPOLOGY, "tests/conftest.py")


@pytest.fixture(scope="session")
def ray_cluster(test_topology: TopologySpec) -> Iterator[object]:
    """A real local Ray cluster: a CPU head plus one labelled fake-GPU node per host."""
    from heteroscale_ray.local_cluster import start_local_cluster

    local = start_local_cluster(test_topology)
    try:
        yield local
    finally:
        local.shutdown()
