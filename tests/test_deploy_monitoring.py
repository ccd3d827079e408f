"""deploy/prometheus and deploy/grafana: valid, unit-tested, and naming only what the project exports.

promtool checks the rule files and the example scrape config, runs the rules' unit tests
(heteroscale.rules.test.yml) and parses every dashboard expression (written as recording
rules into a temporary file). The exported metric names, their labels and the values of the
enumerated labels (reason, signal, role, state, kind) come from running the project's
exporters in-process (control plane, replica families, ingress arrivals and request metrics),
not from a hand list: a renamed metric or reason fails here instead of leaving a panel empty
or an alert that can never fire. The selectors are found by a small PromQL lexer, tested on
its own below. promtool comes with Debian's `prometheus` package (.ci/run installs it when
apt-get is there); without it the promtool checks skip and the name checks still run.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from heteroscale_ray.actors.metrics import SIGNALS, ControlPlaneMetrics
from heteroscale_ray.config import Role, parse_pd_ratio
from heteroscale_ray.control import Observation
from heteroscale_ray.control.types import Desired
from heteroscale_ray.policy.types import Reason, Signals
from heteroscale_ray.serving.metrics_export import (
    REPLICA_METRICS,
    render_arrivals,
    render_prometheus,
)
from heteroscale_ray.serving.replica_stats import IngressLoad, ReplicaStats
from heteroscale_ray.serving.request_metrics import RequestMetrics
from heteroscale_ray.topology.plan import UnplacedReason

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "heteroscale.rules.yml"
SLO_RULES = PROM / "heteroscale.slo.yml"
RULE_TESTS = PROM / "heteroscale.rules.test.yml"
SCRAPE_CONFIG = PROM / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "heteroscale.json"

# Series Prometheus itself adds per scrape target, and the labels it attaches to every series.
TARGET_SERIES = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance", "__name__"}
# Labels whose values are a closed set the exporters show; matchers on them are checked.
ENUM_LABELS = {"reason", "signal", "role", "state", "kind"}
# Grafana's variables, replaced by a value of the right kind before promtool parses the query.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "3h",
    "${service}": "chat",
    "$service": "chat",
}


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip(
            "promtool not installed (Debian package `prometheus`; .ci/run installs it with "
            "apt-get when it can)"
        )
    return exe


def run_promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# ---- what the project exports, from its exporters ----

Exported = dict[str, dict[str, set[str]] | None]  # series -> label -> values seen


def _control_plane_text() -> str:
    """The control plane's exposition after a record() that touches every label value."""
    cp = ControlPlaneMetrics(None)
    ratio = parse_pd_ratio("1:2")
    decisions = {f"s{i}": Desired(f"s{i}", 1, 2, r, pd_ratio=ratio) for i, r in enumerate(Reason)}
    signals = Signals(**{name: 1.0 for name in SIGNALS})
    dg = {
        "service": "s",
        "dg_id": "a",
        "prefill": 2,
        "decode": 2,
        "running": {"prefill": 1, "decode": 2},
    }
    unplaced = [
        {"service": "s", "role": role.value, "reason": reason.value, "count": 1}
        for role in Role
        for reason in UnplacedReason
    ]
    cp.record(
        decisions, {"s": Observation("s", signals)}, {"dgs": [dg]}, {"unplaced": unplaced}, 0.1
    )
    cp.record_capacity(
        {
            "s": {
                "prefill_tps": 1.0,
                "decode_tps": 1.0,
                "decode_batch": 8,
                "prefill_scale": 1.0,
                "decode_scale": 1.0,
                "source": "learned",
            }
        }
    )
    return cp.text()


def _ingress_text() -> str:
    """The ingress's /metrics body: every replica family of both roles, arrivals, requests."""
    replicas = [
        ReplicaStats(
            replica_id=f"{role}-1",
            app_name="s-a",
            service="s",
            dg_id="a",
            role=role,
            gpu_type="H20",
            **{m.attr: 1 for m in REPLICA_METRICS if role in m.roles},
        )
        for role in ("prefill", "decode")
    ]
    req = RequestMetrics()
    req.prompt("s", 10)
    req.first_token("s", 0.1)
    req.inter_token("s", 0.02)
    req.finished("s", "stop", 5, 0.5)
    req.error("s", 503)
    arrivals = render_arrivals({"s": IngressLoad(10.0, 1.0)})
    return render_prometheus(replicas) + arrivals + req.render()


# The series a family of each type puts on the wire (prometheus_client's text format).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def _empty_texts() -> list[str]:
    """Every family the exporters declare (HELP/TYPE lines, no samples yet)."""
    return [
        ControlPlaneMetrics(None).text(),
        render_prometheus([]) + render_arrivals({}) + RequestMetrics().render(),
    ]


def exported_series() -> Exported:
    """Series name -> its labels and the values seen; None: declared, not exercised above."""
    from prometheus_client.parser import text_string_to_metric_families

    series: dict[str, dict[str, set[str]] | None] = {}
    for text in _empty_texts():
        for family in text_string_to_metric_families(text):
            for suffix in _SUFFIXES[family.type]:
                series.setdefault(family.name + suffix, None)
    for text in (_control_plane_text(), _ingress_text()):
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = series.get(sample.name) or defaultdict(set)
                for key, value in sample.labels.items():
                    labels[key].add(value)
                series[sample.name] = labels
    return {name: None if labels is None else dict(labels) for name, labels in series.items()}


@pytest.fixture(scope="module")
def exported() -> Exported:
    return exported_series()


def test_exported_names_come_from_the_exporters(exported: Exported) -> None:
    for m in REPLICA_METRICS:
        assert f"heteroscale_{m.name}" in exported, m.name
    for name in (
        "heteroscale_cp_decisions_total",
        "heteroscale_cp_cycle_seconds_count",
        "heteroscale_time_to_first_token_seconds_bucket",
        "heteroscale_request_arrivals_per_second",
    ):
        assert name in exported
    assert "heteroscale_cp_decisions" not in exported  # a counter's series ends in _total
    decisions, signal = (
        exported["heteroscale_cp_decisions_total"],
        exported["heteroscale_cp_signal"],
    )
    assert decisions is not None and decisions["reason"] == {r.value for r in Reason}
    assert signal is not None and signal["signal"] == set(SIGNALS)


# ---- a small PromQL lexer: the vector selectors of an expression ----


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


AGGREGATIONS = _words(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile"
)
FUNCTIONS = _words(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv exp floor histogram_count histogram_fraction
    histogram_quantile histogram_sum holt_winters hour idelta increase irate label_join
    label_replace last_over_time ln log10 log2 max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin
    sinh sort sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time
    timestamp vector year start end"""
)
LABEL_LIST_KEYWORDS = _words("by without on ignoring group_left group_right")
KEYWORDS = _words("and or unless bool offset atan2 inf nan") | LABEL_LIST_KEYWORDS

_TOKEN = re.compile(
    r"""
      (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},@])
    """,
    re.X,
)


@dataclass(frozen=True)
class Selector:
    name: str  # "" when the selector has no metric name
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        if m.lastgroup != "space":
            out.append((m.lastgroup or "", m.group()))
        pos = m.end()
    return out


def _unquote(text: str) -> str:
    return text[1:-1] if text.startswith("`") else str(ast.literal_eval(text))


def _matchers(toks: list[tuple[str, str]], i: int) -> tuple[list[tuple[str, str, str]], int]:
    """Parse `{label op "value", ...}` starting at the `{` at i; return them and the next index."""
    out, i = [], i + 1
    while toks[i][1] != "}":
        (_, label), (_, op), (kind, value) = toks[i : i + 3]
        if op not in ("=", "!=", "=~", "!~") or kind != "string":
            raise ValueError(f"bad matcher {label}{op}{value}")
        out.append((label, op, _unquote(value)))
        i += 3
        if toks[i][1] == ",":
            i += 1
    return out, i + 1


def _skip_parens(toks: list[tuple[str, str]], i: int) -> int:
    depth = 0
    for j in range(i, len(toks)):
        depth += {"(": 1, ")": -1}.get(toks[j][1], 0)
        if depth == 0:
            return j + 1
    raise ValueError("unbalanced parentheses")


def parse_selectors(expr: str) -> tuple[list[Selector], list[str]]:
    """The vector selectors of `expr`, and the names called as functions that PromQL lacks."""
    toks = _tokens(expr)
    selectors: list[Selector] = []
    unknown_calls: list[str] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and text.lower() in KEYWORDS:
            i += 1
            if text.lower() in LABEL_LIST_KEYWORDS and nxt == "(":
                i = _skip_parens(toks, i)
            continue
        if kind == "ident" and (nxt == "(" or (text in AGGREGATIONS and nxt in ("by", "without"))):
            if text not in FUNCTIONS | AGGREGATIONS:
                unknown_calls.append(text)
            i += 1
            continue
        if kind == "ident":
            matchers: list[tuple[str, str, str]] = []
            i += 1
            if nxt == "{":
                matchers, i = _matchers(toks, i)
            selectors.append(Selector(text, tuple(matchers)))
            continue
        if text == "{":
            matchers, i = _matchers(toks, i)
            name = next((v for label, op, v in matchers if label == "__name__" and op == "="), "")
            selectors.append(Selector(name, tuple(m for m in matchers if m[0] != "__name__")))
            continue
        i += 1
    return selectors, unknown_calls


def _value_problem(series: str, label: str, op: str, value: str, known: set[str]) -> str | None:
    if op in ("=", "!="):
        return None if value in known else f'{series}{{{label}{op}"{value}"}}: no such {label}'
    for alternative in value.split("|"):
        if not any(re.fullmatch(alternative, k) for k in known):
            return f'{series}{{{label}{op}"{value}"}}: "{alternative}" matches no {label}'
    return None


def name_problems(expr: str, exported: Exported, recorded: set[str]) -> list[str]:
    """What in `expr` the project does not export: metric names, label names, label values."""
    selectors, unknown_calls = parse_selectors(expr)
    problems = [f"{name}(): not a PromQL function" for name in unknown_calls]
    for sel in selectors:
        if not sel.name:
            problems.append(f"a selector without a metric name: {sel.matchers}")
            continue
        if sel.name in recorded:
            continue
        labels = TARGET_SERIES.get(sel.name)
        domains: dict[str, set[str]] = {}
        if labels is None:
            if sel.name not in exported:
                problems.append(f"{sel.name}: not a metric the project exports")
                continue
            seen = exported[sel.name]
            if seen is None:
                problems.append(
                    f"{sel.name}: exported, but this test does not exercise it, so its labels "
                    "go unchecked: add it to _control_plane_text() or _ingress_text()"
                )
                continue
            domains = seen
            labels = set(domains) | TARGET_LABELS
        for label, op, value in sel.matchers:
            if label not in labels:
                problems.append(f"{sel.name}: has no label {label!r}")
            elif (
                label in ENUM_LABELS
                and label in domains
                and (problem := _value_problem(sel.name, label, op, value, domains[label]))
            ):
                problems.append(problem)
    return problems


@pytest.mark.parametrize(
    "expr, names, calls",
    [
        ("up", ["up"], []),
        (
            'sum by (service, le) (rate(a_bucket{service=~"$x", le!="1"}[5m]))',
            ["a_bucket"],
            [],
        ),
        ("a > on (service) group_left () b unless ignoring (role) c", ["a", "b", "c"], []),
        (
            "sum without (dg) (x) / on () group_left sum(rate(y[1h30m:1m] offset 5m))",
            ["x", "y"],
            [],
        ),
        ('label_replace(vector(1), "dst", "$1", "src", "(.*)") or sort_desc(z)', ["z"], []),
        ('{__name__="n", role="decode"} * 1e3 > bool 0.5', ["n"], []),
        ("deriv(rec:name:rate5m[15m]) * 900 > 1", ["rec:name:rate5m"], []),
        (
            "histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))",
            ["h_bucket"],
            [],
        ),
        ("rates(x[5m])", ["x"], ["rates"]),
        ("sum(x) by (service) # a comment naming not_a_metric\n", ["x"], []),
    ],
)
def test_lexer_finds_the_selectors(expr: str, names: list[str], calls: list[str]) -> None:
    selectors, unknown_calls = parse_selectors(expr.replace("$__rate_interval", "1m"))
    assert [s.name for s in selectors] == names
    assert unknown_calls == calls


def test_unknown_metric_label_and_value_are_caught(exported: Exported) -> None:
    good = 'sum by (service) (rate(heteroscale_cp_decisions_total{reason="hold_at_bound"}[5m]))'
    assert name_problems(good, exported, set()) == []
    bad = {
        # a typo'd metric name (decision_total for decisions_total)
        "rate(heteroscale_cp_decision_total[5m])": "not a metric the project exports",
        # a name that only a rule records, without that rule
        "service:heteroscale_requests:rate5m": "not a metric the project exports",
        # a label the series lacks, a reason and a signal that do not exist
        'heteroscale_cp_desired_instances{gpu_type="H20"}': "has no label 'gpu_type'",
        'heteroscale_cp_decisions_total{reason="hold_forever"}': "no such reason",
        'heteroscale_cp_decisions_total{reason=~"hold_.*|latency_flor"}': '"latency_flor"',
        'heteroscale_cp_signal{signal="decode_tokens"}': "no such signal",
        'heteroscale_busy_fraction{role="decoder"}': "no such role",
        "rates(heteroscale_busy_fraction[5m])": "not a PromQL function",
    }
    for expr, why in bad.items():
        problems = name_problems(expr, exported, set())
        assert problems and why in problems[0], (expr, problems)
    assert name_problems("service:heteroscale_requests:rate5m", exported, recorded_names()) == []


# ---- the rule files ----


def _rule_groups(path: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["groups"]


def all_rules() -> list[dict[str, Any]]:
    return [r for path in (RULES, SLO_RULES) for g in _rule_groups(path) for r in g["rules"]]


def recorded_names() -> set[str]:
    return {r["record"] for r in all_rules() if "record" in r}


def test_rules_pass_promtool_check() -> None:
    res = run_promtool("check", "rules", RULES.name, SLO_RULES.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == 2


def test_rules_unit_tests_pass() -> None:
    res = run_promtool("test", "rules", RULE_TESTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_scrape_config_passes_promtool() -> None:
    """The example prometheus.yml loads both rule files (a missing ray SD file only warns)."""
    res = run_promtool("check", "config", SCRAPE_CONFIG.name)
    assert res.returncode == 0, res.stdout + res.stderr
    jobs = {j["job_name"] for j in yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]}
    rules_text = RULES.read_text()
    for job in re.findall(r'up\{job="([^"]+)"\}', rules_text):
        assert job in jobs, f"the rules' alert on job {job} has no scrape job"


def test_rules_name_only_exported_metrics(exported: Exported) -> None:
    recorded = recorded_names()
    problems = {
        r.get("record") or r["alert"]: p
        for r in all_rules()
        if (p := name_problems(r["expr"], exported, recorded))
    }
    assert problems == {}


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {r["alert"] for r in all_rules() if "alert" in r}
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts - fires == set(), "alerts no unit test makes fire"
    assert alerts - quiet == set(), "alerts no unit test checks stay quiet"
    assert (fires | quiet) - alerts == set(), "unit tests of alerts that do not exist"


def _load_slo_generator() -> Any:
    spec = importlib.util.spec_from_file_location("slo_rules", PROM / "slo_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slo_rules_are_generated_from_the_example_services() -> None:
    generated = _load_slo_generator().slo_rules(ROOT / "examples" / "services.yaml")
    assert SLO_RULES.read_text() == generated, (
        "heteroscale.slo.yml is out of date: regenerate it with "
        "`.venv/bin/python deploy/prometheus/slo_rules.py examples/services.yaml "
        "> deploy/prometheus/heteroscale.slo.yml`"
    )
    records = {
        (r["record"], r["labels"]["service"])
        for r in all_rules()
        if "record" in r and "labels" in r
    }
    assert ("heteroscale:slo_ttft_seconds", "chat") in records
    assert ("heteroscale:slo_tbt_seconds", "chat") in records


# ---- the dashboard ----


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def _grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr.replace('"$1"', ""), f"an unknown Grafana variable in {expr!r}"
    return expr


def dashboard_exprs() -> dict[str, str]:
    """'panel id/refId title' -> the query with Grafana's variables replaced."""
    return {
        f"{p['id']}/{t['refId']} {p['title']}": _grafana_to_promql(t["expr"])
        for p in _panels(dashboard())
        for t in p.get("targets", [])
    }


def test_dashboard_exprs_parse(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    rules = [
        {"record": f"dashboard:panel_{key.split('/')[0]}_{key.split('/')[1].split()[0]}", "expr": e}
        for key, e in exprs.items()
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = run_promtool("check", "rules", str(path), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout


def test_dashboard_names_only_exported_metrics(exported: Exported) -> None:
    recorded = recorded_names()
    problems = {
        k: p for k, e in dashboard_exprs().items() if (p := name_problems(e, exported, recorded))
    }
    assert problems == {}
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            metric, label = re.fullmatch(
                r"label_values\((\w+), (\w+)\)", var["definition"]
            ).groups()
            assert label in exported[metric], var["definition"]


def test_dashboard_shape() -> None:
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip(), p["title"]
    # What the issue asks the dashboard to show, by the series its queries read.
    used = {s.name for e in dashboard_exprs().values() for s in parse_selectors(e)[0]}
    for topic, names in {
        "load": {"heteroscale_request_success_total", "heteroscale_generation_tokens_total"},
        "instances per role and GPU type": {"heteroscale_busy_fraction"},
        "decisions by reason": {"heteroscale_cp_decisions_total"},
        "P/D ratio": {"heteroscale_cp_pd_ratio", "heteroscale_cp_actual_instances"},
        "TTFT/TBT against SLO": {
            "heteroscale_time_to_first_token_seconds_bucket",
            "heteroscale_inter_token_latency_seconds_bucket",
            "heteroscale:slo_ttft_seconds",
            "heteroscale:slo_tbt_seconds",
        },
        "KV handoff": {
            "heteroscale_kv_handoff_seconds_total",
            "heteroscale_kv_handoff_bytes_total",
        },
        "placement failures": {"heteroscale_cp_placement_failures_total"},
    }.items():
        assert names <= used, f"no panel shows {topic}: {names - used}"
