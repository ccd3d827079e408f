"""deploy/kuberay/heteroscale.yaml: a RayCluster valid against KubeRay's CRD schema (v1.7.0, in
deploy/kuberay/crd/), with KubeRay's own label rules, the same fleet and labels as
cluster.yaml, a services ConfigMap the project's loader accepts and whose minimums place on
that fleet, and a control-plane start the `heteroscale` CLI accepts."""

from __future__ import annotations

import copy
import json
import re
import shlex
from typing import Any

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
from ray._private.label_utils import validate_node_label_syntax

from heteroscale_ray.cli import build_parser
from heteroscale_ray.config import (
    Role,
    ServicesConfig,
    TopologySpec,
    load_services,
    parse_yaml_text,
)
from heteroscale_ray.config.topology import LABEL_GPU_TYPE, LABEL_S0, LABEL_S1, LABEL_S2

KUBERAY = ROOT / "deploy" / "kuberay"
MANIFEST = KUBERAY / "heteroscale.yaml"
CRD = KUBERAY / "crd" / "ray.io_rayclusters.yaml"
GPU_LIMIT = "nvidia.com/gpu"

# Kubernetes label syntax (apimachinery validation.IsQualifiedName / IsValidLabelValue), which
# KubeRay's validateRayGroupLabels applies to group labels.
_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS1035 = r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"


# ---- loading -----------------------------------------------------------------------------


def manifest_docs(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    return manifest_docs(MANIFEST.read_text())


@pytest.fixture(scope="module")
def raycluster(docs: dict[str, dict]) -> dict:
    return docs["RayCluster"]


@pytest.fixture(scope="module")
def crd() -> dict:
    # 0.9 MB of YAML: libyaml's loader when PyYAML has it (~0.7 s here, ~5 s in pure Python).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(CRD.read_text(), Loader=loader)


@pytest.fixture(scope="module")
def strict_schema(crd: dict) -> dict:
    return strict(crd_schema(crd, "v1"))


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def crd_schema(crd: dict, version: str) -> dict:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD has no version {version}")


def strict(schema: Any) -> Any:
    """The schema as `kubectl apply --validate=strict` applies it: a field the structural
    schema does not declare is an error (the API server would prune it silently otherwise)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def schema_errors(schema: dict, doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def groups(rc: dict) -> list[dict]:
    return list(rc["spec"].get("workerGroupSpecs", []))


def container(template: dict) -> dict:
    return template["spec"]["containers"][0]


# ---- what KubeRay and the kubelet do with the manifest -----------------------------------


def kuberay_rule_errors(rc: dict) -> list[str]:
    """KubeRay's validateRayGroupLabels (v1.7.0 ray-operator/controllers/ray/utils/validation.go)
    and its RayCluster name rule: checks the CRD schema cannot express."""
    errors = []
    if not re.fullmatch(_DNS1035, rc["metadata"]["name"]):
        errors.append(f"metadata.name {rc['metadata']['name']!r} is not a DNS-1035 label")
    specs = [("head", rc["spec"]["headGroupSpec"])] + [(g["groupName"], g) for g in groups(rc)]
    for name, spec in specs:
        if "labels" in (spec.get("rayStartParams") or {}):
            errors.append(f"{name}: rayStartParams['labels'] is rejected; use `labels`")
        for key, value in (spec.get("labels") or {}).items():
            prefix, _, key_name = key.rpartition("/")
            if prefix and not (len(prefix) <= 253 and re.fullmatch(_DNS_SUBDOMAIN, prefix)):
                errors.append(f"{name}: label key prefix {prefix!r} is not a DNS subdomain")
            if not (len(key_name) <= 63 and re.fullmatch(_NAME, key_name)):
                errors.append(f"{name}: label key {key!r} is not a qualified name")
            if value and not (len(value) <= 63 and re.fullmatch(_NAME, value)):
                errors.append(f"{name}: label value {value!r} is not a valid label value")
    return errors


def kubelet_env(env: list[dict], fields: dict[str, str]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: downward-API fields resolved, and
    $(VAR) references to earlier variables expanded ($$ escapes a $)."""
    out: dict[str, str] = {}
    for var in env:
        if "valueFrom" in var:
            out[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
            continue
        out[var["name"]] = re.sub(
            r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
            lambda m: "$" if m.group(0) == "$$" else out.get(m.group(1), m.group(0)),
            var.get("value", ""),
        )
    return out


def kuberay_labels_arg(group: dict) -> str:
    """`ray start --labels=...` as KubeRay's updateRayStartParamsLabels writes it."""
    return ",".join(f"{k}={v}" for k, v in sorted((group.get("labels") or {}).items()))


def manifest_topology(rc: dict) -> TopologySpec:
    """The fleet the RayCluster starts (`replicas` Pods per group, one Kubernetes node each),
    labelled as Ray resolves each Pod's labels, seen by the control plane."""
    nodes = [ray_node("head", 0, {})]
    for g in groups(rc):
        c = container(g["template"])
        gpus = int(c["resources"]["limits"][GPU_LIMIT])
        for i in range(g.get("replicas", 0)):
            pod = f"{rc['metadata']['name']}-{g['groupName']}-worker-{i:05d}"
            fields = {
                "spec.nodeName": f"ip-10-1-{len(nodes)}-{i}.ec2.internal",
                "metadata.name": pod,
            }
            env = kubelet_env(c.get("env", []), fields)
            override = json.loads(env.get("RAY_OVERRIDE_LABELS", "{}"))
            labels = ray_node_labels(kuberay_labels_arg(g), override, gpus)
            nodes.append(ray_node(pod, gpus, labels))
    return topology_of(nodes)


def services_configmap(docs: dict[str, dict], rc: dict) -> tuple[str, str]:
    """(mount path of services.yaml on the head, its text in the ConfigMap the head mounts)."""
    template = rc["spec"]["headGroupSpec"]["template"]
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for mount in container(template).get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap")
        if source and source["name"] == docs["ConfigMap"]["metadata"]["name"]:
            return f"{mount['mountPath']}/services.yaml", docs["ConfigMap"]["data"]["services.yaml"]
    raise AssertionError("the head mounts no services ConfigMap")


def hook_commands(rc: dict) -> list[list[str]]:
    """The argv of every `heteroscale ...` call in the head's postStart hook, in order (the
    script's `&&`, `|` and redirections cut off: they are the shell's, not the CLI's)."""
    hook = container(rc["spec"]["headGroupSpec"]["template"])["lifecycle"]["postStart"]
    script = hook["exec"]["command"][-1]
    out = []
    for line in script.splitlines():
        if not line.strip().startswith("heteroscale "):
            continue
        argv = []
        for token in shlex.split(line)[1:]:
            if token[0] in "|>&" or token[:2] in ("1>", "2>"):
                break
            argv.append(token)
        out.append(argv)
    return out


def disagreements(rc: dict, cluster: dict) -> list[str]:
    """Where the RayCluster's GPU groups and cluster.yaml's GPU node types describe different
    fleets: labels, GPUs per node, instance types, node counts."""
    by_type = {
        nt["labels"][LABEL_GPU_TYPE]: (name, nt)
        for name, nt in cluster["available_node_types"].items()
        if nt["resources"].get("GPU", 0) > 0
    }
    out = []
    seen = set()
    for g in groups(rc):
        gpu_type = (g.get("labels") or {}).get(LABEL_GPU_TYPE)
        if gpu_type not in by_type:
            out.append(f"{g['groupName']}: GPU type {gpu_type!r} has no node type in cluster.yaml")
            continue
        seen.add(gpu_type)
        name, nt = by_type[gpu_type]
        c = container(g["template"])
        pairs = [
            ("labels", g["labels"], nt["labels"]),
            ("GPUs", int(c["resources"]["limits"].get(GPU_LIMIT, 0)), nt["resources"]["GPU"]),
            (
                "instance type",
                g["template"]["spec"]
                .get("nodeSelector", {})
                .get("node.kubernetes.io/instance-type"),
                nt["node_config"]["InstanceType"],
            ),
            ("replicas", g.get("replicas"), nt["min_workers"]),
            ("minReplicas", g.get("minReplicas"), nt["min_workers"]),
            ("maxReplicas", g.get("maxReplicas"), nt["max_workers"]),
        ]
        out += [
            f"{g['groupName']} vs {name}: {what} {a!r} != {b!r}" for what, a, b in pairs if a != b
        ]
    out += [
        f"cluster.yaml's {t} node type has no worker group" for t in sorted(set(by_type) - seen)
    ]
    return out


# ---- the tests ---------------------------------------------------------------------------


def test_manifest_is_a_configmap_and_a_raycluster(docs: dict[str, dict]) -> None:
    assert set(docs) == {"ConfigMap", "RayCluster"}
    assert docs["RayCluster"]["apiVersion"] == "ray.io/v1"
    assert docs["ConfigMap"]["apiVersion"] == "v1"


def test_crd_file_is_kuberays_with_its_licence(crd: dict) -> None:
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "rayclusters.ray.io"
    assert "Apache License" in (CRD.parent / "LICENSE").read_text()


def test_raycluster_validates_against_the_crd(raycluster: dict, strict_schema: dict) -> None:
    assert schema_errors(strict_schema, raycluster) == []
    assert kuberay_rule_errors(raycluster) == []


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda rc: groups(rc)[0].update(minReplicas="one"), "minReplicas"),
        (
            lambda rc: rc["spec"].update(workerGroupSpec=rc["spec"]["workerGroupSpecs"]),
            "workerGroupSpec",
        ),
        (lambda rc: groups(rc)[1].pop("template"), "template"),
        (
            lambda rc: container(groups(rc)[0]["template"]).update(imagePullPolicy=7),
            "imagePullPolicy",
        ),
        (lambda rc: rc["spec"]["headGroupSpec"].update(labels=["not", "a", "map"]), "labels"),
    ],
    ids=[
        "wrong-type",
        "misspelled-field",
        "missing-required",
        "pod-template-type",
        "labels-not-map",
    ],
)
def test_schema_check_is_real(
    raycluster: dict, strict_schema: dict, breakage, expected: str
) -> None:
    broken = copy.deepcopy(raycluster)
    breakage(broken)
    errors = schema_errors(strict_schema, broken)
    assert errors and any(expected in e for e in errors), errors


def test_kuberay_label_rules_are_real(raycluster: dict) -> None:
    broken = copy.deepcopy(raycluster)
    groups(broken)[0]["rayStartParams"] = {"labels": "heteroscale.io/gpu-type=L40S"}
    groups(broken)[1]["labels"][LABEL_S1] = "pg decode"  # a space is no label value
    errors = kuberay_rule_errors(broken)
    assert len(errors) == 2, errors


def test_worker_groups_carry_cluster_yaml_labels(raycluster: dict, cluster_config: dict) -> None:
    assert disagreements(raycluster, cluster_config) == []
    for g in groups(raycluster):
        validate_node_label_syntax(g["labels"])  # Ray's own check, as `ray start --labels`
        assert {LABEL_GPU_TYPE, LABEL_S1, LABEL_S2} <= set(g["labels"])


def test_label_agreement_check_is_real(raycluster: dict, cluster_config: dict) -> None:
    broken = copy.deepcopy(raycluster)
    groups(broken)[0]["labels"][LABEL_S1] = "pg-elsewhere"
    container(groups(broken)[1]["template"])["resources"]["limits"][GPU_LIMIT] = "4"
    found = disagreements(broken, cluster_config)
    assert len(found) == 2 and "labels" in found[0] and "GPUs" in found[1], found


def test_each_pod_gets_its_leaf_and_host_labels(raycluster: dict) -> None:
    topo = manifest_topology(raycluster)
    hosts = list(topo.hosts())
    assert len(hosts) == sum(g["replicas"] for g in groups(raycluster))
    assert len({s0 for _, _, s0, _ in hosts}) == len(hosts)  # one Kubernetes node per Pod here
    assert all(h.name.startswith("heteroscale-") for *_, h in hosts)  # the Pod name
    for g in groups(raycluster):
        mine = [(s2, s1) for s2, s1, _, h in hosts if h.gpu_type == g["labels"][LABEL_GPU_TYPE]]
        assert mine == [(g["labels"][LABEL_S2], g["labels"][LABEL_S1])] * g["replicas"]


def test_without_the_override_a_pod_has_no_leaf(raycluster: dict) -> None:
    # Why the manifest sets RAY_OVERRIDE_LABELS: the group labels alone give no heteroscale.io/s0,
    # and the control plane refuses a GPU node without it.
    broken = copy.deepcopy(raycluster)
    for g in groups(broken):
        container(g["template"])["env"] = []
    with pytest.raises(ValueError, match=LABEL_S0):
        manifest_topology(broken)


def test_services_configmap_loads_and_matches_the_example(
    docs: dict[str, dict], raycluster: dict
) -> None:
    path, text = services_configmap(docs, raycluster)
    config = parse_yaml_text(text, ServicesConfig, f"ConfigMap {path}")
    assert config == load_services(ROOT / "examples" / "services-aws.yaml")


def test_every_service_minimum_places_on_the_raycluster(
    docs: dict[str, dict], raycluster: dict
) -> None:
    _, text = services_configmap(docs, raycluster)
    config = parse_yaml_text(text, ServicesConfig, "ConfigMap")
    tick = assert_minimums_place(config, manifest_topology(raycluster))
    assert {dg.service for dg in tick.result.state.dgs} == {s.name for s in config.services}


def test_the_l20_h20_services_place_nothing_on_the_raycluster(raycluster: dict) -> None:
    config = load_services(ROOT / "examples" / "services.yaml")
    unplaced = unplaced_services(config, manifest_topology(raycluster))
    assert unplaced == {s.name: set(Role) for s in config.services}


def test_head_starts_the_control_plane_from_the_configmap(
    docs: dict[str, dict], raycluster: dict
) -> None:
    calls = [build_parser().parse_args(argv) for argv in hook_commands(raycluster)]
    assert [c.command for c in calls] == ["status", "start"]  # start unless one already runs
    args = calls[-1]
    assert args.services == services_configmap(docs, raycluster)[0]
    assert args.address == "auto" and not args.advisory
    ports = {
        p["containerPort"]
        for p in container(raycluster["spec"]["headGroupSpec"]["template"])["ports"]
    }
    assert {args.http_port, args.metrics_port, 6379} <= ports


def test_versions_agree(raycluster: dict) -> None:
    version, ray_version = pyproject_pins()
    assert raycluster["spec"]["rayVersion"] == ray_version
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)", dockerfile, re.M)
    assert base and base.group(1).startswith(f"{ray_version}-"), dockerfile
    wheel = f"heteroscale_ray-{version}-py3-none-any.whl"
    assert f"COPY dist/{wheel} " in dockerfile and f'"ray[serve]=={ray_version}"' in dockerfile
    images = {container(g["template"])["image"] for g in groups(raycluster)}
    images.add(container(raycluster["spec"]["headGroupSpec"]["template"])["image"])
    assert images == {f"heteroscale-ray:{version}"}
