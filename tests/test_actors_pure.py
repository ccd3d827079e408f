"""The control plane's pure helpers, without Ray: observations, soft scale-in, ratio gate,
checkpoint round trips."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from heteroscale_ray.actors.checkpoint import (
    dgs_from_json,
    dgs_to_json,
    pending_from_json,
    pending_to_json,
)
from heteroscale_ray.actors.dg_views import dg_targets
from heteroscale_ray.config import (
    AffinityLevel,
    Role,
    ServicesConfig,
    TopologySpec,
    parse_yaml_text,
)
from heteroscale_ray.control import Desired, HeteroScaleAutoscaler, control_cycle
from heteroscale_ray.control.retire import retire_unconfigured, unroutable
from heteroscale_ray.control.soft_scale_in import (
    pending_from_plan,
    reserved_of,
    serving_counts,
    settle,
    slo_held,
)
from heteroscale_ray.control.startup_skew import gate_open
from heteroscale_ray.control.types import Observation
from heteroscale_ray.policy import Reason, Signals
from heteroscale_ray.topology import (
    ClusterGraph,
    DeploymentGroup,
    ScaleRequest,
    describe_plan,
    domain_owners,
    plan_cycle,
    role_counts,
    without_hosts,
)

SERVICES = parse_yaml_text(
    """
services:
  - name: chat
    slo: {ttft_s: 1.0, tbt_s: 0.1}
    pd_ratio: "1:2"
    prefill: {gpu_types: [L20], max_instances: 4}
    decode: {gpu_types: [H20], min_instances: 2, max_instances: 8}
    affinity: S1
    policy: {target_per_instance: 30, scale_in_cooldown_s: 0, scale_out_cooldown_s: 0}
""",
    ServicesConfig,
)
SPEC = SERVICES.by_name()["chat"]


@pytest.mark.parametrize(
    ("ready", "want", "tol", "expect"),
    [
        ((0, 2), (1, 2), 0.5, False),  # no prefill yet: decode would idle
        ((1, 0), (1, 2), 0.5, False),
        ((1, 1), (1, 2), 0.5, False),  # 1:1 is twice the 1:2 target
        ((1, 2), (2, 4), 0.5, True),  # right ratio, not all up yet
        ((2, 3), (2, 4), 0.5, True),  # within tolerance
        ((2, 4), (2, 4), 0.0, True),  # everything ready
        ((2, 0), (2, 0), 0.5, False),  # a DG without decode can serve nothing
        ((0, 3), (0, 3), 0.5, False),  # nor one without prefill
    ],
)
def test_ratio_gate(
    ready: tuple[int, int], want: tuple[int, int], tol: float, expect: bool
) -> None:
    assert gate_open(*ready, *want, tol) is expect


def _topology() -> TopologySpec:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import TEST_TOPOLOGY

    return TopologySpec.model_validate(TEST_TOPOLOGY)


def _grown() -> tuple[ClusterGraph, tuple]:
    graph = ClusterGraph.from_topology(_topology())
    plan = plan_cycle(graph, SERVICES.by_name(), (), [ScaleRequest("chat", 2, 4)])
    return graph, plan.apply(())


def _obs(tbt: float | None) -> dict[str, Observation]:
    return {"chat": Observation("chat", Signals(observed_at=0.0, tbt_p99_s=tbt))}


def test_soft_scale_in_keeps_removed_instances_until_the_window_ends() -> None:
    graph, dgs = _grown()
    plan = plan_cycle(graph, SERVICES.by_name(), dgs, [ScaleRequest("chat", 1, 2)])
    pending = pending_from_plan(plan, dgs, now=10.0)
    after = plan.apply(dgs)
    assert role_counts(after, "chat") == (1, 2)
    assert sum(len(p.instances) for p in pending) == 3
    # Replicas kept running = target + pending, so nothing stops before the window ends.
    assert serving_counts(after, pending) == {dgs[0].dg_id: (2, 4)}
    kw = dict(window_s=20.0, services=SERVICES.by_name(), desired={}, graph=graph)
    early = settle(after, pending, now=15.0, observations=_obs(0.05), **kw)
    assert early.pending == tuple(pending) and early.dgs == after and not early.events
    done = settle(after, pending, now=31.0, observations=_obs(0.05), **kw)
    assert done.pending == () and done.dgs == after and "stopped" in done.events[0]


def test_soft_scale_in_restores_at_once_when_the_slo_breaks_or_more_is_wanted() -> None:
    graph, dgs = _grown()
    plan = plan_cycle(graph, SERVICES.by_name(), dgs, [ScaleRequest("chat", 1, 2)])
    pending = pending_from_plan(plan, dgs, now=10.0)
    after = plan.apply(dgs)
    kw = dict(services=SERVICES.by_name(), graph=graph, window_s=20.0)
    breached = settle(after, pending, now=11.0, observations=_obs(0.5), desired={}, **kw)
    assert breached.pending == () and role_counts(breached.dgs, "chat") == (2, 4)
    assert "SLO breached" in breached.events[0]
    # Wanting more brings back only what is short; the spare decode keeps its window.
    more = {"chat": Desired("chat", 2, 3, "scale_out")}
    wanted = settle(after, pending, now=11.0, observations=_obs(0.05), desired=more, **kw)
    assert role_counts(wanted.dgs, "chat") == (2, 3) and "wants more" in wanted.events[0]
    assert [(p.count(Role.PREFILL), p.count(Role.DECODE)) for p in wanted.restored] == [(1, 1)]
    assert [(p.count(Role.PREFILL), p.count(Role.DECODE), p.since) for p in wanted.pending] == [
        (0, 1, 10.0)
    ]
    assert serving_counts(wanted.dgs, wanted.pending) == {dgs[0].dg_id: (2, 4)}


def _prefill_pending() -> tuple[ClusterGraph, tuple[DeploymentGroup, ...], list]:
    """2P+4D shrunk to 1P+4D: one prefill pending in its still-live DG."""
    graph, dgs = _grown()
    plan = plan_cycle(graph, SERVICES.by_name(), dgs, [ScaleRequest("chat", 1, 4)])
    pending = pending_from_plan(plan, dgs, now=10.0)
    assert [(p.count(Role.PREFILL), p.count(Role.DECODE), p.whole_dg) for p in pending] == [
        (1, 0, False)
    ]
    return graph, plan.apply(dgs), pending


def test_a_pending_prefill_stays_pending_when_only_decode_is_short() -> None:
    """Restoring it would only see the same tick's scale-in remove a prefill again, every tick
    decode stays short, and routing would flap each time."""
    graph, after, pending = _prefill_pending()
    kw = dict(window_s=20.0, services=SERVICES.by_name(), graph=graph, observations=_obs(0.05))
    decode_short = {"chat": Desired("chat", 1, 6, "scale_out")}
    kept = settle(after, pending, now=11.0, desired=decode_short, **kw)
    assert kept.restored == () and kept.pending == tuple(pending) and not kept.events
    assert kept.dgs == after
    # Its window still runs from the removal, so it stops on time.
    done = settle(after, pending, now=31.0, desired=decode_short, **kw)
    assert done.stopped == tuple(pending) and done.dgs == after
    # Short of prefill, it comes back.
    prefill_short = {"chat": Desired("chat", 2, 6, "scale_out")}
    back = settle(after, pending, now=11.0, desired=prefill_short, **kw)
    assert back.restored == tuple(pending) and back.pending == ()
    assert role_counts(back.dgs, "chat") == (2, 4)
    assert "wants more prefill" in back.events[0]


def test_a_deleted_dg_comes_back_with_both_roles_when_one_is_short() -> None:
    """A DG needs both roles to serve: only decode is short, yet the whole 1P+2D DG returns
    with its prefill; the decode not needed keeps waiting."""
    graph, dgs = _grown()
    plan = plan_cycle(graph, SERVICES.by_name(), dgs, [ScaleRequest("chat", 0, 0)])
    pending = pending_from_plan(plan, dgs, now=10.0)
    after = plan.apply(dgs)
    assert after == () and [p.whole_dg for p in pending] == [True]
    wanted = settle(
        after,
        pending,
        now=11.0,
        window_s=20.0,
        services=SERVICES.by_name(),
        observations=_obs(0.05),
        desired={"chat": Desired("chat", 0, 1, "scale_out")},
        graph=graph,
    )
    assert role_counts(wanted.dgs, "chat") == (1, 1)
    assert [(p.count(Role.PREFILL), p.count(Role.DECODE)) for p in wanted.pending] == [(1, 3)]
    assert [p.whole_dg for p in wanted.pending] == [False]  # its DG routes again


def test_a_breach_never_re_adds_a_dg_with_one_role() -> None:
    """A prefill removed from a DG that was later deleted (its own removal already gone, say
    with its node) would come back as a DG of one prefill: it routes to nothing. It keeps
    waiting; a pending part whose DG still exists comes back at once."""
    graph, after, pending = _prefill_pending()
    kw = dict(window_s=20.0, services=SERVICES.by_name(), graph=graph, desired={})
    gone = settle((), pending, now=11.0, observations=_obs(0.5), **kw)
    assert gone.restored == () and gone.dgs == () and gone.pending == tuple(pending)
    live = settle(after, pending, now=11.0, observations=_obs(0.5), **kw)
    assert live.restored == tuple(pending) and role_counts(live.dgs, "chat") == (2, 4)


def test_slo_held_without_latency_data() -> None:
    assert slo_held(SPEC, None)
    assert slo_held(SPEC, _obs(None)["chat"])
    assert not slo_held(SPEC, _obs(0.2)["chat"])


@pytest.mark.parametrize(
    ("guard", "ttft", "tbt", "held"),
    [
        ({"metric": "ttft"}, 0.5, 9.9, True),  # TBT untrusted for this service: ignored
        ({"metric": "ttft"}, 9.9, 0.01, False),
        ({"metric": "tbt"}, 9.9, 0.01, True),
        ({"metric": "both"}, 0.5, 9.9, False),
        ({"enabled": False, "metric": "ttft"}, 0.5, 9.9, False),  # guard off: every SLO counts
    ],
)
def test_slo_held_watches_what_the_latency_guard_watches(
    guard: dict[str, object], ttft: float, tbt: float, held: bool
) -> None:
    spec = SPEC.model_copy(
        update={
            "policy": SPEC.policy.model_copy(
                update={"latency_guard": SPEC.policy.latency_guard.model_copy(update=guard)}
            )
        }
    )
    obs = Observation("chat", Signals(observed_at=0.0, ttft_p99_s=ttft, tbt_p99_s=tbt))
    assert slo_held(spec, obs) is held


@pytest.mark.parametrize(
    ("signals", "held"),
    [
        ({"ttft_p99_s": 9.9, "ttft_wait_p99_s": 0.1}, True),  # long prompts' own compute
        ({"ttft_p99_s": 9.9, "ttft_wait_p99_s": 8.0, "prefill_queue_s": 5.0}, False),
        ({"tbt_p99_s": 0.2, "decode_step_s": 0.02}, True),  # KV transfer, not batches
        ({"tbt_p99_s": 0.2, "decode_step_s": 0.15}, False),
    ],
)
def test_a_latency_floor_does_not_restore_a_removal(signals: dict, held: bool) -> None:
    """A breach capacity cannot fix was not caused by the removal and would not end with a
    restore: counted, it kept every removal of such a service from ever stopping."""
    spec = SPEC.model_copy(
        update={
            "policy": SPEC.policy.model_copy(
                update={
                    "latency_guard": SPEC.policy.latency_guard.model_copy(update={"metric": "both"})
                }
            )
        }
    )
    obs = Observation("chat", Signals(observed_at=0.0, **signals))
    assert slo_held(spec, obs) is held


def test_checkpoint_round_trips_dgs_and_pending() -> None:
    graph, dgs = _grown()
    assert dgs_from_json(dgs_to_json(dgs)) == dgs
    plan = plan_cycle(graph, SERVICES.by_name(), dgs, [ScaleRequest("chat", 1, 2)])
    for p in pending_from_plan(plan, dgs, now=3.0):
        assert pending_from_json(pending_to_json(p)) == p


def test_precomputed_decisions_go_through_the_shared_control_cycle() -> None:
    """The pre-scheduler plans with control_cycle, the same function the simulator uses."""
    graph = ClusterGraph.from_topology(_topology())
    auto = HeteroScaleAutoscaler(SERVICES.services)
    obs = {"chat": Observation("chat", Signals(observed_at=0.0, decode_tps=100.0))}
    desired = auto.desire(0.0, obs)
    result = control_cycle(desired, graph=graph, services=SERVICES.by_name(), dgs=())
    want = desired["chat"]
    assert role_counts(result.dgs, "chat") == (want.prefill, want.decode)
    assert any(line.startswith("create chat-dg0 in S1") for line in describe_plan(result.plan))


def test_unhealthy_hosts_leave_the_topology() -> None:
    spec = without_hosts(_topology(), {"a0-h20", "a1-l20"})
    assert {h.name for *_, h in spec.hosts()} == {"a0-l20", "a1-h20"}


def _used(dgs: Iterable[DeploymentGroup]) -> list[tuple[str, int]]:
    return [(i.host, g) for dg in dgs for i in dg.instances for g in i.gpus]


def test_pending_removals_are_reserved_so_a_breach_can_restore_them() -> None:
    """Instances in the soft window keep their GPUs and ids: a later cycle places around them,
    and an SLO breach can still put them back."""
    graph, dgs = _grown()
    plan = plan_cycle(graph, SERVICES.by_name(), dgs, [ScaleRequest("chat", 1, 2)])
    pending = pending_from_plan(plan, dgs, now=10.0)
    after = plan.apply(dgs)
    # The policy asks for 2P+4D again; the planner must not count or reuse the pending ones.
    result = control_cycle(
        {"chat": Desired("chat", 2, 4, Reason.SCALE_OUT)},
        graph=graph,
        services=SERVICES.by_name(),
        dgs=after,
        reserved=reserved_of(pending),
    )
    assert role_counts(result.dgs, "chat") == (2, 4)
    reserved = reserved_of(pending)
    gpus = _used([*result.dgs, *reserved])
    assert len(gpus) == len(set(gpus))  # no GPU of a pending instance handed out
    ids = [i.instance_id for dg in [*result.dgs, *reserved] for i in dg.instances]
    assert len(ids) == len(set(ids))  # no instance id reused either
    breached = settle(
        result.dgs,
        pending,
        now=12.0,
        window_s=20.0,
        services=SERVICES.by_name(),
        observations=_obs(0.5),
        desired={},
        graph=graph,
    )
    assert "restored" in breached.events[0] and breached.pending == ()
    assert role_counts(breached.dgs, "chat") == (3, 6)


def test_a_deleted_dg_id_stays_taken_while_it_drains() -> None:
    graph, dgs = _grown()
    plan = plan_cycle(graph, SERVICES.by_name(), dgs, [ScaleRequest("chat", 0, 0)])
    pending = pending_from_plan(plan, dgs, now=10.0)
    assert [p.whole_dg for p in pending] == [True]
    again = plan_cycle(
        graph,
        SERVICES.by_name(),
        plan.apply(dgs),
        [ScaleRequest("chat", 1, 2)],
        reserved=reserved_of(pending),
    )
    created = [line for line in describe_plan(again) if line.startswith("create")]
    assert created and all(pending[0].dg.dg_id + " " not in line for line in created)
    restored = settle(
        again.apply(plan.apply(dgs)),
        pending,
        now=11.0,
        window_s=20.0,
        services=SERVICES.by_name(),
        observations=_obs(0.5),
        desired={},
        graph=graph,
    )
    assert "restored" in restored.events[0]
    assert len({dg.dg_id for dg in restored.dgs}) == len(restored.dgs) == 2


def test_domain_owners_survive_a_domain_going_dark() -> None:
    from topology_builders import make_topology

    full = make_topology(
        {"pod-a": {"s1-a": ["H20"]}, "pod-b": {"s1-b": ["H20"], "s1-c": ["H20"]}},
        sub_clusters={"sc-a": ["pod-a"], "sc-b": ["pod-b"]},
    )
    owners = domain_owners(full, {})
    assert owners == {
        "pod-a": "sc-a",
        "s1-a": "sc-a",
        "pod-b": "sc-b",
        "s1-b": "sc-b",
        "s1-c": "sc-b",
        "root": "sc-a",
    }
    # Every host of pod-b misses its report: the filtered view loses pod-b and its sub-cluster,
    # but owners come from the full view and so do not change.
    dark = without_hosts(full, {"s1-b-h0", "s1-c-h0"})
    assert {s2.name for s2 in dark.big_pods} == {"pod-a"}
    assert domain_owners(full, owners) == owners
    # Even when the view itself loses them (Ray nodes not alive), the previous owner is kept.
    assert domain_owners(dark, owners) == owners


def test_cluster_wide_dgs_keep_their_scheduler_when_a_big_pod_sorting_first_joins() -> None:
    """Root DGs (affinity `none`) went to the first scheduler name each cycle: a new big-pod
    `a` took them from `b`, whose scheduler deleted the app, and `a` deployed it again."""
    from topology_builders import make_dg, make_service, make_topology, one_gpu_each

    before = make_topology({"b": {"mb": ["H20"]}, "c": {"mc": ["H20"]}})
    after = make_topology({"a": {"ma": ["H20"]}, "b": {"mb": ["H20"]}, "c": {"mc": ["H20"]}})
    owners = domain_owners(after, domain_owners(before, {}))
    svc = make_service(affinity="none")
    dg = make_dg("svc-dg0", "root", one_gpu_each("mb-h0", "pd"), level=AffinityLevel.NONE)
    targets = dg_targets({"svc": svc}, [dg], [], owners, ["a", "b", "c"])
    assert {sc: [t.dg_id for t in ts] for sc, ts in targets.items()} == {"b": ["svc-dg0"]}


def test_dgs_of_a_removed_service_drain_and_leave_routing() -> None:
    graph, dgs = _grown()
    kept, retired = retire_unconfigured(dgs, SERVICES.by_name(), now=5.0)
    assert kept == tuple(dgs) and retired == ()
    kept, retired = retire_unconfigured(dgs, {}, now=5.0)  # `heteroscale update` dropped chat
    assert kept == ()
    assert [(p.whole_dg, p.count(Role.PREFILL), p.count(Role.DECODE)) for p in retired] == [
        (True, 2, 4)
    ]
    # They keep running (drained) through the window, then stop; no spec means no restore.
    assert serving_counts(kept, retired) == {dgs[0].dg_id: (2, 4)}
    kw = dict(window_s=20.0, services={}, desired={}, graph=graph)
    early = settle(kept, retired, now=10.0, observations=_obs(0.5), **kw)
    assert early.pending == retired and early.dgs == ()
    assert unroutable({"chat"}, {}, early.dgs, early.pending) == []  # still draining
    done = settle(kept, retired, now=25.0, observations=_obs(0.5), **kw)
    assert done.pending == () and done.dgs == () and "stopped" in done.events[0]
    assert unroutable({"chat"}, {}, done.dgs, done.pending) == ["chat"]
    assert unroutable({"chat"}, SERVICES.by_name(), (), ()) == []  # configured again
