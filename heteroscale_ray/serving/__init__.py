"""Serving side: a real CPU engine behind Ray Serve prefill/decode deployments.

Modules (import what you need; nothing heavy is imported here):
    model, tokenizer   numpy transformer with prefix cache and continuous batching (no Ray)
    emulation          emulated GPU step timing from heteroscale_ray.perf
    replica_stats      ReplicaStats, what a replica reports, and the check for malformed ones
    metrics            per-replica event windows -> ReplicaStats; the ingress's ArrivalMeter
    metrics_export     Prometheus text of replica reports and ingress arrivals
    request_metrics    the ingress's request counters and latency histograms
    replica            what prefill and decode replicas share
    prefill, decode    the PrefillServer / DecodeServer deployment bodies
    router             the OpenAI-compatible ingress (FastAPI)
    admission          the ingress's order: requests that can still make the TTFT SLO first
    choices, migration a request's choices streamed, and moved when the replica serving fails
    api_requests       request parsing and checks; api_responses: OpenAI bodies and events
    routing_table      routes and gates per DG, and the actor that also hosts the metrics hub
    metrics_hub        latest replica and ingress reports, what the control plane polls
    deployments        the actuator API the control plane calls (deploy/scale/drain/delete)
    api_types          OpenAI request/response models
"""
