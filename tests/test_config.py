"""Config validation: examples load, bad input names the file, field path and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heteroscale_ray.config import (
    ConfigError,
    ServicesConfig,
    TopologySpec,
    load_services,
    load_topology,
    parse_yaml_text,
    synthetic_topology,
    topology_from_ray_nodes,
    write_schemas,
)

ROOT = Path(__file__).resolve().parents[1]

GOOD_SERVICE = """
services:
  - name: chat
    slo: {ttft_s: 1.0, tbt_s: 0.04}
    pd_ratio: "1:3"
    prefill: {gpu_types: [L20]}
    decode: {gpu_types: [H20]}
    policy: {target_per_instance: 2000}
"""


def test_examples_load() -> None:
    services = load_services(ROOT / "examples/services.yaml")
    topo = load_topology(ROOT / "examples/topology.yaml")
    assert [s.name for s in services.services] == ["chat", "summarise"]
    assert services.services[0].ratio == (1, 2)
    assert topo.total_gpus() == 64
    assert topo.gpu_types() == {"H20", "L20"}


def test_defaults_are_filled() -> None:
    cfg = parse_yaml_text(GOOD_SERVICE, ServicesConfig)
    svc = cfg.services[0]
    assert svc.affinity.value == "S1"
    assert svc.policy.signal == "decode_tps"
    assert svc.policy.scale_in_cooldown_s > svc.policy.scale_out_cooldown_s
    assert [t.at for t in svc.policy.latency_guard.tiers] == [0.95, 1.2]


def test_signal_demand_fills_what_it_leaves_out_with_the_measured_policy() -> None:
    """`signal: demand` alone is the policy the benchmarks measure as `general`; what a service
    does set is kept, and the paper's rule keeps its own defaults."""
    from heteroscale_ray.config.policy import DEMAND_DEFAULTS

    def policy(text: str):  # type: ignore[no-untyped-def]
        yaml = GOOD_SERVICE.replace("{target_per_instance: 2000}", text)
        return parse_yaml_text(yaml, ServicesConfig).services[0].policy

    plain = policy("{signal: demand}")
    for field, value in DEMAND_DEFAULTS.items():
        assert getattr(plain, field) == value, field
    assert plain.latency_guard.metric == "both"
    assert plain.latency_guard.tiers  # the rest of the guard keeps its defaults
    general = load_services(ROOT / "examples/sim_services.yaml").by_name()["general"]
    assert plain == general.policy

    said = policy("{signal: demand, scale_in_tolerance: 0.3, latency_guard: {cooldown_s: 5}}")
    assert said.scale_in_tolerance == 0.3 and said.scale_out_cooldown_s == 0
    assert said.latency_guard.cooldown_s == 5 and said.latency_guard.metric == "both"
    assert policy("{signal: demand, latency_guard: {metric: tbt}}").latency_guard.metric == "tbt"

    paper = policy("{target_per_instance: 2000}")
    assert (paper.scale_in_tolerance, paper.scale_out_cooldown_s) == (0.2, 30.0)
    assert paper.scale_in_cooldown_s == 300.0 and paper.latency_guard.metric == "tbt"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ("    bogus: 1\n", ["svc.yaml: services[0].bogus: unknown key", "'policy'"]),
        ('    pd_ratio: "3"\n', ["services[0].pd_ratio", "must look like '1:3'"]),
        ("    pd_ratio: 3:1\n", ["services[0].pd_ratio", 'base-60 number 181: quote it, "3:1"']),
        ("    slo: {ttft_s: -1, tbt_s: 0.04}\n", ["services[0].slo.ttft_s", "greater than 0"]),
        ("    prefill: {gpu_types: [Z99]}\n", ["unknown GPU 'Z99'", "add it under 'gpus'"]),
        (
            "    policy: {target_per_instance: 10, scale_in_tolerance: 1.5}\n",
            ["services[0].policy.scale_in_tolerance", "less than or equal to 1", "Fix:"],
        ),
        (
            "    policy: {target_per_instance: 10, mode: periodic}\n",
            ["needs a 'periodic' time table"],
        ),
        (
            "    decode: {gpu_types: [H20], min_instances: 5, max_instances: 2}\n",
            ["min_instances (5) exceeds max_instances (2)"],
        ),
    ],
)
def test_bad_service_names_field_and_fix(patch: str, expected: list[str]) -> None:
    key = patch.strip().split(":")[0]
    lines = [
        ln for ln in GOOD_SERVICE.splitlines(keepends=True) if not ln.strip().startswith(key + ":")
    ]
    text = "".join(lines) + patch
    with pytest.raises(ConfigError) as err:
        parse_yaml_text(text, ServicesConfig, source="svc.yaml")
    for fragment in expected:
        assert fragment in str(err.value)


def test_missing_field_and_bad_yaml() -> None:
    with pytest.raises(ConfigError, match=r"services\[0\]\.policy: required field is missing"):
        parse_yaml_text(
            GOOD_SERVICE.replace("    policy: {target_per_instance: 2000}\n", ""),
            ServicesConfig,
            "s.yaml",
        )
    with pytest.raises(ConfigError, match="line 3, column 1: not valid YAML"):
        parse_yaml_text("services:\n  - name: [\n", ServicesConfig, "s.yaml")
    with pytest.raises(ConfigError, match="cannot read file"):
        load_services("/nonexistent/services.yaml")


def test_duplicate_names_rejected() -> None:
    text = GOOD_SERVICE + GOOD_SERVICE.split("services:\n", 1)[1]
    with pytest.raises(ConfigError, match="duplicate service names"):
        parse_yaml_text(text, ServicesConfig)


def test_topology_duplicates_and_subclusters() -> None:
    host = {"name": "h", "gpu_type": "H20", "gpus": 8}
    pod = {
        "name": "s2",
        "mini_pods": [{"name": "s1", "leaves": [{"name": "s0", "hosts": [host, host]}]}],
    }
    with pytest.raises(ConfigError, match="duplicate host name 'h'"):
        parse_yaml_text(json.dumps({"big_pods": [pod]}), TopologySpec)
    pod["mini_pods"][0]["leaves"][0]["hosts"] = [host]
    with pytest.raises(ConfigError, match="unknown big-pods"):
        parse_yaml_text(
            json.dumps({"big_pods": [pod], "sub_clusters": {"a": ["nope"]}}), TopologySpec
        )


def test_topology_from_ray_nodes() -> None:
    def node(nid: str, gpu: str | None, s1: str, gpus: int = 4) -> dict:
        labels = {
            "heteroscale.io/s0": f"{s1}-l0",
            "heteroscale.io/s1": s1,
            "heteroscale.io/s2": "s2-a",
        }
        if gpu:
            labels["heteroscale.io/gpu-type"] = gpu
        return {
            "NodeID": nid,
            "Alive": True,
            "Labels": labels,
            "Resources": {"GPU": gpus, "CPU": 1},
        }

    head = {"NodeID": "head", "Alive": True, "Labels": {}, "Resources": {"CPU": 2}}
    topo = topology_from_ray_nodes([head, node("n1", "H20", "s1-x"), node("n2", "L20", "s1-y", 2)])
    hosts = {h.node_id: (s2, s1, h.gpu_type, h.gpus) for s2, s1, _s0, h in topo.hosts()}
    assert hosts == {"n1": ("s2-a", "s1-x", "H20", 4), "n2": ("s2-a", "s1-y", "L20", 2)}
    broken = node("n3", "H20", "s1-x")
    del broken["Labels"]["heteroscale.io/s1"]
    with pytest.raises(ValueError, match="heteroscale.io/s1"):
        topology_from_ray_nodes([broken])
    with pytest.raises(ValueError, match="no Ray node carries GPUs"):
        topology_from_ray_nodes([head])
    # a running control plane leaves a bad node out and plans on the rest (one mislabelled
    # node had failed every cycle, so nothing scaled until it was fixed)
    first, twin = node("n1", "H20", "s1-x"), node("n4", "H20", "s1-y")
    for n in (first, twin):
        n["Labels"]["heteroscale.io/host"] = "h1"
    skipped: list[str] = []
    topo = topology_from_ray_nodes([first, broken, twin], skipped)
    assert [h.node_id for *_, h in topo.hosts()] == ["n1"]
    assert len(skipped) == 2 and "heteroscale.io/s1" in skipped[0] and "'h1'" in skipped[1]
    with pytest.raises(ValueError, match="heteroscale.io/s1"):  # all left out: say why
        topology_from_ray_nodes([broken], [])


def test_synthetic_topology_is_seeded_and_sized() -> None:
    a = synthetic_topology(4096, seed=3)
    b = synthetic_topology(4096, seed=3)
    assert a == b
    assert a.total_gpus() == 4096
    assert len(a.gpu_types()) > 1


def test_write_schemas(tmp_path: Path) -> None:
    paths = write_schemas(tmp_path)
    schema = json.loads((tmp_path / "services.schema.json").read_text())
    assert {p.name for p in paths} == {"services.schema.json", "topology.schema.json"}
    assert "ServiceSpec" in schema["$defs"]
    assert schema["$defs"]["ServiceSpec"]["additionalProperties"] is False


def test_the_model_names_a_config_accepts_are_the_performance_models_profiles() -> None:
    from heteroscale_ray.config.services import MODEL_PROFILES
    from heteroscale_ray.perf.profiles import builtin_profiles

    assert sorted(MODEL_PROFILES) == sorted(builtin_profiles())


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (("model: dense-8b", "model: llama-9000"), "unknown model profile 'llama-9000'"),
        (("ttft_s: 1.0", "ttft_s: .inf"), "finite number"),
        (("target_per_instance: 2000", "target_per_instance: 1e400"), "finite number"),
    ],
)
def test_a_config_that_would_fail_every_replay_is_refused_where_it_is_read(
    change: tuple[str, str], error: str
) -> None:
    """Each validated, then `replay` failed with a traceback (a KeyError for the model, an
    OverflowError for an infinite SLO)."""
    text = "    model: dense-8b\n" + GOOD_SERVICE.split("services:\n  - name: chat\n")[1]
    text = "services:\n  - name: chat\n" + text.replace(*change)
    assert change[1] in text
    with pytest.raises(ConfigError, match=error):
        parse_yaml_text(text, ServicesConfig, "test")
