"""Serving side: a real CPU engine behind Ray Serve prefill/decode deployments.

Modules (import what you need; nothing heavy is imported here):
    engine, tokenizer  numpy transformer with prefix cache and continuous batching
    emulation          emulated GPU step timing from heteroscale_ray.perf
    metrics            per-replica stats (ReplicaStats) and Prometheus export
    replica            what prefill and decode replicas share
    prefill, decode    the PrefillServer / DecodeServer deployment bodies
    router             the OpenAI-compatible ingress (FastAPI)
    routing_table      the serving directory actor (routes, gates, replica reports)
    deployments        the actuator API the control plane calls (deploy/scale/drain/delete)
    api_types          OpenAI request/response models
"""
