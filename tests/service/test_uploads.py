"""POST /ood-score with real multipart bodies: accepted formats, request shapes and streaming
limits (each kind of bad image is in test_bad_input.py)."""

from __future__ import annotations

from tests.support import KEY_HEADERS
from tests.support.images import digit_png, image_bytes, multipart_fields_only

H = KEY_HEADERS


def score(client, files, **params):
    return client.post("/ood-score", files=files, params={"wait": 0, **params}, headers=H)


def test_score_png_jpeg_webp_grey_and_colour_any_size(client, run_job, services):
    files = [("files", ("digit.png", digit_png(), "image/png")),
             ("files", ("photo.jpg", image_bytes("JPEG", size=(64, 40), mode="RGB"),
                        "image/jpeg")),
             ("files", ("pic.webp", image_bytes("WEBP", size=(9, 13), mode="RGB"),
                        "image/webp"))]
    response = score(client, files)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    upload_dir = services.data.upload_dir(job_id)
    assert len(list(upload_dir.iterdir())) == 3
    assert run_job(job_id)["status"] == "succeeded"
    body = client.get(f"/jobs/{job_id}/result", headers=H).json()
    assert body["model"] == "demo:1" and body["calibrated"] is True
    assert [r["filename"] for r in body["results"]] == ["digit.png", "photo.jpg", "pic.webp"]
    for row in body["results"]:
        assert isinstance(row["score"], float)
        assert 0.0 <= row["percentile"] <= 100.0 and isinstance(row["is_ood"], bool)
    assert not upload_dir.exists()  # uploads are deleted once scored


def test_scores_are_deterministic(client, run_job):
    files = [("files", ("a.png", digit_png(3), "image/png"))]
    first, second = score(client, files).json()["job_id"], score(client, files).json()["job_id"]
    run_job(first), run_job(second)
    a = client.get(f"/jobs/{first}/result", headers=H).json()["results"][0]["score"]
    b = client.get(f"/jobs/{second}/result", headers=H).json()["results"][0]["score"]
    assert a == b


def test_one_bad_file_refuses_the_whole_request(client, services):
    files = [("files", ("good.png", digit_png(), "image/png")),
             ("files", ("bad.png", b"garbage", "image/png"))]
    assert score(client, files).status_code == 415
    assert services.store.list() == []  # nothing queued
    assert list(services.data.uploads.iterdir()) == []


def test_request_shape_errors(make_client):
    client = make_client(max_images_per_request=2)
    # no file parts at all
    body, content_type = multipart_fields_only(note="x")
    response = client.post("/ood-score", content=body, headers={**H,
                                                                "content-type": content_type})
    assert response.status_code == 422 and "no image files" in response.json()["detail"]
    # not multipart
    response = client.post("/ood-score", json={"files": []}, headers=H)
    assert response.status_code == 415
    # too many images
    files = [("files", (f"{i}.png", digit_png(i), "image/png")) for i in range(3)]
    assert score(client, files).status_code == 413
    files = [("files", (f"{i}.png", digit_png(i), "image/png")) for i in range(5)]
    assert score(client, files).status_code == 413
    # a broken multipart body
    response = client.post("/ood-score", content=b"--xyz\r\nContent-Disposition: form-data",
                           headers={**H, "content-type": "multipart/form-data; boundary=abc"})
    assert 400 <= response.status_code < 500
    # unknown model, bad model spec
    one = [("files", ("a.png", digit_png(), "image/png"))]
    assert score(client, one, model="ghost").status_code == 404
    assert score(client, one, model="Ghost!").status_code == 422


def test_upload_bytes_are_limited_while_streaming(make_client):
    client = make_client(max_upload_bytes=4096)
    big = image_bytes("PNG", size=(200, 200))  # ~40 kB of noise
    response = score(client, [("files", ("big.png", big, "image/png"))])
    assert response.status_code == 413 and "4096" in response.json()["detail"]

    boundary = "testboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode()

    def body():  # chunked transfer: no Content-Length to refuse up front
        yield head
        for start in range(0, len(big), 1000):
            yield big[start:start + 1000]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/ood-score", content=body(), params={"wait": 0}, headers={
        **H, "content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413, response.text


def test_worker_revalidates_what_it_reads(client, run_job, services):
    """A stored upload that changed after the API checked it fails the job, not the worker."""
    job_id = score(client, [("files", ("a.png", digit_png(), "image/png"))]).json()["job_id"]
    (path,) = services.data.upload_dir(job_id).iterdir()
    path.write_bytes(b"tampered")
    assert run_job(job_id)["status"] == "failed"
    job = client.get(f"/jobs/{job_id}", headers=H).json()
    assert job["status"] == "failed" and "a.png" in job["error"]
