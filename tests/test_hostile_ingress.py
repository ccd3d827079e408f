"""Hostile bodies against the real Serve ingress on the shared local Ray cluster: every one is a
4xx OpenAI error (never a 500), no client-visible message names internals, a request that
fails inside the server gets a generic error, and the ingress serves normally afterwards.

Reuses test_serving.py's stack (one DG of service "chat", prefill on L20, decode on H20).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests
from test_fuzz_api import _LEAK, NAMED
from test_serving import SERVICE, Stack, _reference, stack  # noqa: F401 - the fixture

from heteroscale_ray.serving.api_requests import MAX_BODY_BYTES

pytestmark = pytest.mark.slow

ROUTES = ["/v1/completions", "/v1/chat/completions"]
# Internals a client must never read (besides _LEAK's class names and tracebacks).
_INTERNALS = ("ServeReplica", "ActorDiedError", "RayServeException", "ray.", "Deployment", "actor")


def _assert_openai_error(r: requests.Response, statuses: range | set[int]) -> dict[str, str]:
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["message"] and err["type"], err
    assert not _LEAK.search(err["message"]), err
    assert not any(word in err["message"] for word in _INTERNALS), err
    return err


def _post(at: Stack, route: str, body: bytes, **headers: str) -> requests.Response:
    return requests.post(
        f"{at.url}{route}",
        data=body,
        headers={"content-type": "application/json", **headers},
        timeout=60,
    )


@pytest.mark.parametrize("route", ROUTES)
def test_every_named_hostile_body_is_a_4xx(stack: Stack, route: str) -> None:  # noqa: F811
    for name, body in NAMED.items():
        if body.startswith(b'{"model":"m"'):
            body = body.replace(b'"model":"m"', f'"model":"{SERVICE}"'.encode(), 1)
        r = _post(stack, route, body)
        err = _assert_openai_error(r, range(400, 500))
        if name == "oversized":
            assert r.status_code == 413 and err["code"] == "request_too_large"


@pytest.mark.parametrize("route", ROUTES)
def test_content_type_and_size_limits(stack: Stack, route: str) -> None:  # noqa: F811
    ok = json.dumps({"model": SERVICE, "prompt": "hi", "messages": []}).encode()
    r = _post(stack, route, ok, **{"content-type": "text/plain"})
    assert _assert_openai_error(r, {415})["code"] == "unsupported_media_type"
    form = requests.post(f"{stack.url}{route}", data={"model": SERVICE}, timeout=60)
    _assert_openai_error(form, {415})

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(3):
            yield b" " * MAX_BODY_BYTES

    r = requests.post(
        f"{stack.url}{route}",
        data=chunked(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert _assert_openai_error(r, {413})["code"] == "request_too_large"


def test_a_request_that_fails_inside_the_server_gets_a_generic_error(
    stack: Stack,  # noqa: F811
) -> None:
    """A service whose only DG names an application that does not exist: the handle call
    raises inside the ingress. The client reads a generic 5xx, not the exception."""
    import ray

    from heteroscale_ray.serving.model import ModelConfig
    from heteroscale_ray.serving.routing_table import DgRoute, get_routing_table

    table = get_routing_table()
    ray.get(table.register_service.remote("ghost", ModelConfig(), "dense-8b"))
    ray.get(table.upsert_dg.remote(DgRoute("ghost", "g0", "ghost-app-do-not-create")))
    try:
        deadline = time.monotonic() + 30
        while "ghost" not in requests.get(f"{stack.url}/healthz", timeout=10).json()["services"]:
            assert time.monotonic() < deadline, "the ingress never saw the ghost service"
            time.sleep(0.2)
        for stream in (False, True):
            body = {"model": "ghost", "prompt": "hi", "max_tokens": 2, "stream": stream}
            r = _post(stack, "/v1/completions", json.dumps(body).encode())
            err = _assert_openai_error(r, range(500, 600))
            assert "ghost-app" not in err["message"], err
    finally:
        ray.get(table.remove_service.remote("ghost"))


def test_the_ingress_serves_normally_after_the_barrage(stack: Stack) -> None:  # noqa: F811
    for body in list(NAMED.values())[:6]:  # one more round, then a good request
        _post(stack, "/v1/completions", body)
    assert requests.get(f"{stack.url}/health", timeout=10).status_code == 200
    r = _post(
        stack,
        "/v1/completions",
        json.dumps(
            {
                "model": SERVICE,
                "prompt": "hello",
                "max_tokens": 8,
                "temperature": 0,
                "ignore_eos": True,
            }
        ).encode(),
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == _reference("hello", 8)
