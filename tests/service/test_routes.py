"""Routes through the real app: generate, jobs, results, models, train, queue limits."""

from __future__ import annotations

import base64

from tests.support import KEY_HEADERS
from tests.support.images import decode_png

H = KEY_HEADERS


def submit_generate(client, **body):
    response = client.post("/generate", json={"n": 2, **body}, headers=H)
    assert response.status_code == 202, response.text
    return response.json()


def test_generate_queues_a_job_with_the_default_model(client, services):
    accepted = submit_generate(client, seed=7, sampler="texture_only", steps_pixel=3)
    assert accepted["status"] == "queued" and accepted["model"] == "demo:1"
    job = client.get(f"/jobs/{accepted['job_id']}", headers=H).json()
    assert job["status"] == "queued" and job["kind"] == "generate"
    assert job["params"]["seed"] == 7 and job["params"]["sampler"] == "texture_only"
    assert job["result_url"] is None
    # The broker message is small: the record holds the parameters, the task only the id.
    record = services.store.get(accepted["job_id"])
    assert record.params["model_name"] == "demo" and record.params["model_version"] == 1


def test_generated_result_as_png_grid_and_as_json(client, run_job):
    job_id = submit_generate(client, n=3, seed=1)["job_id"]
    assert client.get(f"/jobs/{job_id}/result", headers=H).status_code == 409
    assert run_job(job_id)["status"] == "succeeded"
    job = client.get(f"/jobs/{job_id}", headers=H).json()
    assert job["status"] == "succeeded" and job["progress"]["fraction"] == 1.0
    assert job["result_url"] == f"/jobs/{job_id}/result"

    grid = client.get(f"/jobs/{job_id}/result", headers=H)
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert decode_png(grid.content).size[0] > 8  # 3 tiles of 8x8 with padding

    body = client.get(f"/jobs/{job_id}/result?format=json", headers=H).json()
    assert body["model"] == "demo:1" and body["n"] == 3 and len(body["images"]) == 3
    for item in body["images"]:
        image = decode_png(base64.b64decode(item["png_base64"]))
        assert image.size == (8, 8) and image.mode == "L"


def test_generate_wait_answers_202_while_the_job_is_queued(client):
    """No worker runs here; the 200-with-images case is in tests/system."""
    response = client.post("/generate?wait=0.3", json={"n": 1}, headers=H)
    assert response.status_code == 202 and response.json()["status"] == "queued"


def test_same_seed_same_images(client, run_job):
    first = submit_generate(client, n=2, seed=3)["job_id"]
    second = submit_generate(client, n=2, seed=3)["job_id"]
    run_job(first), run_job(second)
    a = client.get(f"/jobs/{first}/result?format=json", headers=H).json()["images"]
    b = client.get(f"/jobs/{second}/result?format=json", headers=H).json()["images"]
    assert a == b


def test_generate_rejects_bad_parameters(make_client):
    client = make_client(max_generate_n=4, max_generate_steps=50)
    cases = [({"n": 0}, "n"), ({"n": 5}, "n"), ({"n": 1, "steps_pixel": 51}, "steps_pixel"),
             ({"n": 1, "steps_latent": -1}, "steps_latent"),
             ({"n": 1, "sampler": "magic"}, "sampler"),
             ({"n": 1, "step_size_pixel": 0}, "step_size_pixel"),
             ({"n": 1, "colour": "red"}, "colour"), ({"n": "many"}, "n"),
             ({"n": 1, "model": "../etc"}, "model")]
    for body, field in cases:
        response = client.post("/generate", json=body, headers=H)
        assert response.status_code == 422, (body, response.text)
        assert field in response.text
    # NaN is not JSON, but Python's parser reads it: still refused, never a 500.
    response = client.post("/generate", content=b'{"n": 1, "step_size_pixel": NaN}',
                           headers={**H, "content-type": "application/json"})
    assert response.status_code == 422
    response = client.post("/generate", content=b"{not json", headers={
        **H, "content-type": "application/json"})
    assert response.status_code == 422
    assert client.post("/generate?wait=-1", json={"n": 1}, headers=H).status_code == 422
    assert client.post("/generate?wait=1e9", json={"n": 1}, headers=H).status_code == 422


def test_unknown_model_is_404_with_the_known_names(client):
    response = client.post("/generate", json={"n": 1, "model": "nope"}, headers=H)
    assert response.status_code == 404 and "demo" in response.json()["detail"]
    response = client.post("/generate", json={"n": 1, "model": "demo:9"}, headers=H)
    assert response.status_code == 404 and "no version 9" in response.json()["detail"]


def test_queue_full_is_429_with_retry_after(make_client):
    client = make_client(max_queued_jobs=3, max_queued_jobs_per_key=2)
    submit_generate(client), submit_generate(client)
    response = client.post("/generate", json={"n": 1}, headers=H)
    assert response.status_code == 429 and "Retry-After" in response.headers
    assert "this key" in response.json()["detail"]


def test_cancel_a_queued_job_is_immediate_and_final(client, run_job):
    job_id = submit_generate(client)["job_id"]
    response = client.delete(f"/jobs/{job_id}", headers=H)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert client.delete(f"/jobs/{job_id}", headers=H).status_code == 409
    # A worker that receives the message later skips it.
    assert run_job(job_id)["skipped"] == "cancelled"
    job = client.get(f"/jobs/{job_id}", headers=H).json()
    assert job["status"] == "cancelled" and job["started"] is None


def test_jobs_list_and_lookup(client):
    ids = [submit_generate(client, seed=i)["job_id"] for i in range(3)]
    listed = client.get("/jobs", headers=H).json()["jobs"]
    assert [j["job_id"] for j in listed] == ids[::-1]  # newest first
    assert client.get("/jobs?status=succeeded", headers=H).json()["jobs"] == []
    assert len(client.get("/jobs?limit=2", headers=H).json()["jobs"]) == 2
    assert client.get("/jobs?status=exploded", headers=H).status_code == 422
    assert client.get("/jobs/" + "0" * 32, headers=H).status_code == 404
    assert client.get("/jobs/not-an-id", headers=H).status_code == 404
    assert client.delete("/jobs/" + "f" * 32, headers=H).status_code == 404


def test_models_list_and_default(client, services, tiny_checkpoint):
    models = client.get("/models", headers=H).json()
    assert models["default_model"] == "demo"
    assert models["models"][0]["name"] == "demo"
    assert models["models"][0]["versions"][0]["calibrated"] is True
    version = services.registry.register("demo", tiny_checkpoint, job_id="x" * 32)
    assert version == 2
    response = client.put("/models/demo/default", json={"version": 2}, headers=H)
    assert response.status_code == 200 and response.json()["default_version"] == 2
    accepted = client.post("/generate", json={"n": 1}, headers=H).json()
    assert accepted["model"] == "demo:2"
    assert client.put("/models/demo/default", json={"version": 7},
                      headers=H).status_code == 404
    assert client.put("/models/ghost/default", json={"version": 1},
                      headers=H).status_code == 404
    assert client.put("/models/demo/default", json={"version": "two"},
                      headers=H).status_code == 422


def test_train_queues_a_validated_job(client):
    """(Every refused training request is in test_bad_input.py.)"""
    ok = client.post("/train", json={"dataset": "mnist5k", "preset": "tiny", "name": "mine",
                                     "overrides": {"training": {"iterations": 3}}}, headers=H)
    assert ok.status_code == 202 and ok.json()["kind"] == "train"
    job = client.get(f"/jobs/{ok.json()['job_id']}", headers=H).json()
    assert job["params"]["overrides"] == {"training": {"iterations": 3}}


def test_json_bodies_over_the_limit_are_413(make_client):
    client = make_client(max_json_bytes=1024)
    big = {"n": 1, "model": None, "pad": "x" * 5000}
    assert client.post("/generate", json=big, headers=H).status_code == 413

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"n": 1, "pad": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    response = client.post("/generate", content=chunks(),
                           headers={**H, "content-type": "application/json"})
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method in [("/generate", "post"), ("/ood-score", "post"), ("/train", "post"),
                         ("/datasets", "post"), ("/jobs", "get"), ("/jobs/{job_id}", "get"),
                         ("/jobs/{job_id}", "delete"), ("/jobs/{job_id}/result", "get"),
                         ("/models", "get"), ("/models/{name}/default", "put"),
                         ("/healthz", "get"), ("/readyz", "get")]:
        assert method in paths[path], (path, method)
    assert "multipart/form-data" in paths["/ood-score"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
