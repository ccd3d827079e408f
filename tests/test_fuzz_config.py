"""Fuzzing the config loader users hit (`load_services`, `load_topology`, what `heteroscale
validate`, `start` and `update` call): mutated copies of the files in examples/ are accepted or
rejected with a ConfigError that names the mutated field, never another exception.

Structured mutations (a key deleted, renamed or added, a value replaced by a wrong type, a
negative or huge number, NaN, a bad enum, deep nesting) must name the field they touched;
text mutations (bytes inserted, deleted or replaced, bad YAML, bad UTF-8) must give a
ConfigError or a valid config.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heteroscale_ray.config import (
    ConfigError,
    ServicesConfig,
    TopologySpec,
    load_services,
    load_topology,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _examples() -> dict[str, tuple[Any, Callable[[Path], Any]]]:
    """The documents to mutate: examples/ as shipped, with sim_services.yaml cut to its two
    services that cover dynamic_ratio and signal demand (keeps the fuzz fast), plus the
    optional blocks no example sets (gpus, kv_guard, demand, sub_clusters)."""
    services = yaml.safe_load((EXAMPLES / "services.yaml").read_text())
    services["gpus"] = [
        {"name": "X1", "tflops": 100, "memory_gb": 40, "mem_bw_tbps": 1.0,
         "interconnect": "pcie", "interconnect_gbps": 32, "cost_per_hour": 0.5}
    ]  # fmt: skip
    services["services"][0]["policy"]["kv_guard"] = {"enabled": True, "high": 0.9, "step": 0.1}
    sim = yaml.safe_load((EXAMPLES / "sim_services.yaml").read_text())
    sim["services"] = [s for s in sim["services"] if s["name"] in ("assistant", "general")]
    sim["services"][-1]["policy"]["demand"] = {"prefill_utilization": 0.8, "backlog_periods": 3}
    topology = yaml.safe_load((EXAMPLES / "topology.yaml").read_text())
    topology["sub_clusters"] = {"all": ["s2-a", "s2-b"]}
    return {
        "services.yaml": (services, load_services),
        "sim_services.yaml": (sim, load_services),
        "topology.yaml": (topology, load_topology),
    }


DOCS = _examples()
FUZZ = settings(
    max_examples=550,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key and index path in `doc`, parents before children."""
    out: list[tuple[Any, ...]] = []
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    )
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


PATHS = {name: _paths(doc) for name, (doc, _) in DOCS.items()}

hostile_values = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            False,
            "",
            "bogus",
            "H999",
            "1:0",
            "0:1",
            "3",
            "25:99",
            "none",
            "S3",
            -1,
            0,
            -0.5,
            1e-300,
            10**30,
            -(10**30),
            math.nan,
            math.inf,
            -math.inf,
            [],
            {},
            [1, 2],
            {"x": 1},
            [[[[[[["deep"]]]]]]],
        ]
    ),  # fmt: skip
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.lists(st.text(max_size=4), max_size=3),
    st.integers(1, 150).map(lambda d: _nested(d)),
)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def structured_mutation(draw: st.DrawFn) -> tuple[str, Any, str, str]:
    """(example, mutated document, operation, the field it touched)."""
    name = draw(st.sampled_from(sorted(DOCS)))
    doc = copy.deepcopy(DOCS[name][0])
    path = draw(st.sampled_from(PATHS[name]))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    # The field a message must name: the last mapping key on the path (sub_clusters' keys are
    # names the user picks, not fields: sub_clusters is the field there).
    field = next(str(p) for p in reversed(path) if isinstance(p, str))
    if "sub_clusters" in path:
        field = "sub_clusters"
    op = draw(st.sampled_from(["replace", "delete", "rename", "extra"]))
    if op == "delete" and isinstance(parent, dict):
        del parent[key]
    elif op == "rename" and isinstance(parent, dict):
        new = draw(st.sampled_from([key.upper(), key + "s", key.replace("_", "-"), "_" + key]))
        parent[new] = parent.pop(key)
        if "sub_clusters" not in path:
            field = key if new == key else new  # either "missing <key>" or "unknown <new>"
    elif op == "extra":
        target = parent[key] if isinstance(parent[key], dict) else parent
        if not isinstance(target, dict):
            target = parent
        extra = "x_" + draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8))
        if isinstance(target, dict):
            target[extra] = draw(hostile_values)
            field = "sub_clusters" if "sub_clusters" in path else extra
        else:  # a list of scalars: append a stray item instead
            target.append(draw(hostile_values))
    else:
        op = "replace"
        parent[key] = draw(hostile_values)
    return name, doc, op, field


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def _load(workdir: Path, name: str, data: bytes) -> ConfigError | None:
    """Load `data` as a file through the user's entry point; return the ConfigError if any."""
    path = workdir / name
    path.write_bytes(data)
    try:
        cfg = DOCS[name][1](path)
    except ConfigError as e:
        text = str(e)
        assert e.problems and all(line.startswith(f"{path}: ") for line in text.splitlines()), text
        assert "Traceback" not in text and not re.search(r"instance of [A-Z]", text), text
        return e
    assert isinstance(cfg, ServicesConfig | TopologySpec)
    return None


def test_the_documents_to_mutate_are_valid(tmp_path: Path) -> None:
    for name in DOCS:
        assert _load(tmp_path, name, _dump(DOCS[name][0]).encode()) is None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


@FUZZ
@given(case=structured_mutation())
def test_mutated_examples_are_accepted_or_rejected_naming_the_field(
    workdir: Path, case: tuple[str, Any, str, str]
) -> None:
    name, doc, op, field = case
    err = _load(workdir, name, _dump(doc).encode())
    if err is not None:
        assert field in str(err) or "nest deeper than" in str(err), (op, field, str(err))


YAML_NOISE = [":", ": ", "-", "- ", " ", "  ", "\t", "\n", "[", "]", "{", "}", ",", "&a", "*a",
              "!!int ", "!!python/object ", "%", "@", "`", "'", '"', "#", "? ", "|", ">", "<<: "]  # fmt: skip


@st.composite
def text_mutation(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(["services.yaml", "topology.yaml"]))  # as shipped, comments too
    data = bytearray((EXAMPLES / name).read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        piece = draw(
            st.one_of(
                st.sampled_from(YAML_NOISE).map(str.encode),
                st.binary(min_size=1, max_size=3),
                st.text(max_size=3).map(str.encode),
            )
        )
        if kind == "insert":
            data[at:at] = piece
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        elif kind == "replace":
            data[at : at + len(piece)] = piece
        else:
            del data[at:]
    return name, bytes(data)


@settings(FUZZ, max_examples=450)
@given(case=text_mutation())
def test_mangled_example_text_is_accepted_or_a_config_error(
    workdir: Path, case: tuple[str, bytes]
) -> None:
    _load(workdir, *case)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (b"services:\n  - name: chat\xff\n", "line 2"),
        (b"[" * 5000, "nest deeper than 64 levels"),
        (b"a:\n" + b"".join(b" " * i + b"- \n" for i in range(0, 400, 2)), "nest deeper than"),
        (b"services: &x [*x]\n", "services[0]"),
        (b"services: 5\n", "services"),
        (b"7\n", "(top level): expected a mapping"),
        (b"{1: 2}\n", "key 1 is not a string"),
        (b"gpus: []\ngpus: []\n", "key 'gpus' appears twice"),
        (b"services:\n  - name: a\n    slo: {ttft_s: 2024-13-01}\n", "line 3"),
        (b"services: !!int x\n", "line 1"),
        (b"services: !!int ''\n", "line 1"),  # an empty int: IndexError inside PyYAML
        (b"services: !!python/object:os.system {}\n", "line 1"),
        (b"", "empty"),
    ],
    ids=[
        "utf8",
        "deep",
        "deep-block",
        "cycle",
        "wrong-type",
        "scalar",
        "int-key",
        "dup-key",
        "bad-date",
        "bad-tag",
        "empty-int",
        "python-tag",
        "empty",
    ],  # fmt: skip
)
def test_named_bad_files_get_a_config_error(workdir: Path, text: bytes, needle: str) -> None:
    err = _load(workdir, "services.yaml", text)
    assert err is not None and needle in str(err), str(err)
