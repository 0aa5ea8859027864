"""The OpenAPI schema documents issue 26's fields with examples: the Idempotency-Key header
of every creating POST, the quota headers of their answers, and a queued job's ``queue``."""

from __future__ import annotations

from tests.support import KEY_HEADERS


def test_schema_has_the_new_fields_with_examples(client):
    spec = client.get("/openapi.json").json()
    for path in ("/generate", "/ood-score", "/train", "/datasets"):
        post = spec["paths"][path]["post"]
        header = next(p for p in post["parameters"] if p["name"] == "Idempotency-Key")
        assert header["in"] == "header" and "Idempotent-Replayed" in header["description"]
        assert header["schema"]["examples"] == ["5f0c8e9e-2b7c-4a8e-9d2a-0c4b1f7e6a31"]
    for path, code in (("/generate", "202"), ("/ood-score", "200"), ("/train", "202")):
        headers = spec["paths"][path]["post"]["responses"][code]["headers"]
        assert set(headers) == {"RateLimit-Policy", "RateLimit"}
        assert headers["RateLimit"]["example"].startswith('"jobs";r=')
    queue = spec["components"]["schemas"]["QueuePosition"]
    assert queue["example"]["position"] == 3 and "estimate" in queue["properties"]
    assert "queue" in spec["components"]["schemas"]["Job"]["properties"]


def test_callback_url_without_a_secret_is_422(client):
    response = client.post("/generate", json={"n": 1, "callback_url": "https://example.org/h"},
                           headers=KEY_HEADERS)
    assert response.status_code == 422 and "DEBM_WEBHOOK_SECRET" in response.text
    job = client.app.state.services.store.list(limit=1)
    assert job == []  # nothing was queued
