"""Memory per request is bounded by the request's work: structural checks on the real API and
the real task code (model.formats.imagefile.DECODES counts the decoded images alive at once)."""

from __future__ import annotations

import io
import json
import zipfile

from PIL import Image

from model.formats.imagefile import DECODES
from tests.support import KEY_HEADERS

H = KEY_HEADERS


def big_png(seed: int, size: int = 2048) -> bytes:
    """Large, and a few kB once compressed: the shape of the review's scoring upload."""
    buffer = io.BytesIO()
    Image.new("L", (size, size), seed * 30 % 256).save(buffer, format="PNG")
    return buffer.getvalue()


def big_jpeg(seed: int, size: int = 2048) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 30 % 256, 50, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def files_of(*images: bytes):
    return [("files", (f"{i}.img", data, "application/octet-stream"))
            for i, data in enumerate(images)]


def test_scoring_decodes_one_image_at_a_time_in_the_api_and_the_worker(client, run_job):
    images = [big_png(i) for i in range(4)] + [big_jpeg(i) for i in range(4)]
    DECODES.reset()
    response = client.post("/ood-score", params={"wait": 0}, files=files_of(*images),
                           headers=H)
    assert response.status_code == 202, response.text
    # the API: eight decodes, never two alive together, none alive after
    assert DECODES.decoded == 8 and DECODES.peak == 1 and DECODES.alive == 0
    # JPEGs were decoded at 1/8 scale (2048 -> 256), PNGs at full size
    assert DECODES.decoded_pixels == 4 * 2048 ** 2 + 4 * 256 ** 2
    DECODES.reset()
    assert run_job(response.json()["job_id"])["status"] == "succeeded"
    # the worker (the tiny model is 8x8): JPEGs at 1/8 scale, one alive at a time
    assert DECODES.decoded == 8 and DECODES.peak == 1 and DECODES.alive == 0
    assert DECODES.decoded_pixels == 4 * 2048 ** 2 + 4 * 256 ** 2


def test_a_request_over_the_pixel_budget_is_413_before_any_decoding(make_client):
    client = make_client(max_request_pixels=3 * 2048 ** 2)
    DECODES.reset()
    response = client.post("/ood-score", params={"wait": 0},
                           files=files_of(*[big_png(i) for i in range(4)]), headers=H)
    assert response.status_code == 413, response.text
    assert "DEBM_MAX_REQUEST_PIXELS" in response.json()["detail"]
    assert DECODES.decoded == 0
    services = client.app.state.services
    assert services.store.list() == [] and list(services.data.uploads.iterdir()) == []
    assert client.post("/ood-score", params={"wait": 0},
                       files=files_of(*[big_png(i) for i in range(3)]),
                       headers=H).status_code == 202


def test_the_worker_rechecks_the_pixel_budget_of_a_changed_upload(client):
    from worker.handlers import BODIES
    from worker.lifecycle import execute
    from worker.runtime import TaskRuntime

    budget = 2048 ** 2 - 1
    response = client.post("/ood-score", params={"wait": 0}, files=files_of(big_png(0, 64)),
                           headers=H)
    job_id = response.json()["job_id"]
    services = client.app.state.services
    # the stored upload replaced behind the API's back with one over the worker's budget
    (services.data.upload_dir(job_id) / "0000.img").write_bytes(big_png(1, 2048))
    worker_settings = services.settings.model_copy(update={"max_request_pixels": budget})
    runtime = TaskRuntime.create(worker_settings)
    DECODES.reset()
    execute(runtime, job_id, "score", BODIES["score"])
    job = services.store.get(job_id)
    assert job.status == "failed" and "pixels in all" in job.error, job
    assert DECODES.decoded == 0


def _zip_of_big_pngs(n: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(n):
            archive.writestr(f"{i}.png", big_png(i, 1024))
    return buffer.getvalue()


def test_dataset_upload_and_training_load_one_image_at_a_time(client, run_job):
    DECODES.reset()
    response = client.post("/datasets", files={"file": ("big.zip", _zip_of_big_pngs(6))},
                           headers=H)
    assert response.status_code == 201, response.text
    assert DECODES.decoded == 6 and DECODES.peak == 1
    dataset = response.json()["dataset_id"]
    response = client.post("/train", json={"dataset": dataset, "preset": "tiny",
                                           "overrides": {"training": {"iterations": 1,
                                                                      "warmup_steps": 0},
                                                         "data": {"holdout_fraction": 0.5}}},
                           headers=H)
    assert response.status_code == 202, response.text
    DECODES.reset()
    job = run_job(response.json()["job_id"])
    assert job["status"] == "succeeded", client.get(f"/jobs/{response.json()['job_id']}",
                                                    headers=H).text
    assert DECODES.decoded == 6 and DECODES.peak == 1 and DECODES.alive == 0


def test_training_on_a_dataset_too_big_for_the_worker_is_422_at_submit(make_client):
    client = make_client(worker_memory_bytes=600 * 2 ** 20)
    response = client.post("/datasets", files={"file": ("big.zip", _zip_of_big_pngs(2))},
                           headers=H)
    dataset = response.json()["dataset_id"]
    services = client.app.state.services
    # the record says 200,000 images: at 3x128x128 they would not fit in 600 MiB
    meta_path = services.data.dataset_dir(dataset) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "count": 200_000}))
    body = {"dataset": dataset, "preset": "tiny",
            "overrides": {"network": {"image_size": 128, "channels": 3}}}
    response = client.post("/train", json=body, headers=H)
    assert response.status_code == 422, response.text
    assert "DEBM_WORKER_MEMORY_BYTES" in response.text and "200000 images" in response.text
    assert services.store.list() == []
