"""POST /datasets: zips of images and .npz arrays are validated member by member before they
are stored; a stored dataset trains with the real task code."""

from __future__ import annotations

import numpy as np

from tests.support import KEY_HEADERS, tiny_total_steps
from tests.support.images import (digit_png, image_bytes, image_zip,
                                  multipart_fields_only, npz_bytes)

H = KEY_HEADERS


def upload(client, name: str, data: bytes):
    return client.post("/datasets", files={"file": (name, data, "application/octet-stream")},
                       headers=H)


def test_zip_of_images_is_stored_and_listed(client, services):
    data = image_zip({f"digits/{i}.png": digit_png(i) for i in range(12)} |
                     {"__MACOSX/._0.png": b"junk", ".DS_Store": b"junk"})
    response = upload(client, "digits.zip", data)
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["format"] == "zip" and info["count"] == 12 and info["channels"] == 1
    assert (info["height"], info["width"]) == (28, 28)
    stored = services.data.dataset_dir(info["dataset_id"])
    assert (stored / "data.zip").read_bytes() == data
    listed = client.get("/datasets", headers=H).json()["datasets"]
    assert [d["dataset_id"] for d in listed] == [info["dataset_id"]]


def test_npz_in_every_accepted_layout(client):
    rng = np.random.default_rng(0)
    layouts = {
        "nhw_uint8": rng.integers(0, 256, (10, 8, 8), dtype=np.uint8),
        "nhwc_float01": rng.random((10, 8, 8, 3)).astype(np.float32),
        "nchw_pm1": (rng.random((10, 1, 8, 8)) * 2 - 1).astype(np.float32),
    }
    for name, array in layouts.items():
        response = upload(client, f"{name}.npz", npz_bytes(x=array, y=np.arange(10)))
        assert response.status_code == 201, (name, response.text)
        assert response.json()["count"] == 10


def test_dataset_request_shape_errors(make_client):
    client = make_client(max_dataset_bytes=2048)
    response = client.post("/datasets", files=[("a", ("a.zip", b"PK", "x")),
                                               ("b", ("b.zip", b"PK", "x"))], headers=H)
    assert response.status_code == 422
    response = client.post("/datasets", data={"no": "file"}, headers=H)  # urlencoded
    assert response.status_code == 415
    body, content_type = multipart_fields_only(no="file")
    response = client.post("/datasets", content=body,
                           headers={**H, "content-type": content_type})
    assert response.status_code == 422 and "exactly one file" in response.json()["detail"]
    big = image_zip({f"{i}.png": image_bytes("PNG", size=(32, 32), seed=i) for i in range(5)})
    assert upload(client, "big.zip", big).status_code == 413


def test_training_on_an_uploaded_dataset_registers_a_version(client, run_job, services):
    rng = np.random.default_rng(1)
    images = np.zeros((40, 8, 8), dtype=np.uint8)
    for i in range(40):
        images[i, 1:7, rng.integers(1, 6)] = 255
    dataset_id = upload(client, "bars.npz", npz_bytes(x=images)).json()["dataset_id"]
    response = client.post("/train", json={"dataset": dataset_id, "preset": "tiny",
                                           "name": "bars", "seed": 3}, headers=H)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert run_job(job_id)["status"] == "succeeded", client.get(f"/jobs/{job_id}",
                                                               headers=H).json()
    job = client.get(f"/jobs/{job_id}", headers=H).json()
    assert job["result"]["model"] == "bars:1" and job["metrics"]["step"] == tiny_total_steps()
    result = client.get(f"/jobs/{job_id}/result", headers=H).json()
    assert result["name"] == "bars" and result["version"] == 1 and result["calibrated"]
    models = {m["name"]: m for m in client.get("/models", headers=H).json()["models"]}
    assert models["bars"]["versions"][0]["job_id"] == job_id


def test_a_fortran_ordered_npz_is_refused_by_the_api_and_the_loader_alike(client):
    """One layout rule (model.formats.archives.npy_layout_problem): the API refuses at upload
    what the worker's loader would refuse, instead of 201 and then a failed training job."""
    from model.formats.archives import DatasetError
    from model.loaders import load_npz

    images = np.asfortranarray(np.random.default_rng(2).integers(0, 256, (10, 8, 8),
                                                                 dtype=np.uint8))
    data = npz_bytes(x=images)
    response = upload(client, "fortran.npz", data)
    assert response.status_code == 422, response.text
    assert "Fortran-ordered" in response.json()["detail"]
    try:
        load_npz(data, image_size=8, channels=1)
    except DatasetError as exc:
        assert "Fortran-ordered" in str(exc)
    else:
        raise AssertionError("the loader read an array the API refuses")
    # The same images in C order pass both.
    contiguous = npz_bytes(x=np.ascontiguousarray(images))
    assert upload(client, "c.npz", contiguous).status_code == 201
    assert load_npz(contiguous, image_size=8, channels=1)[0].shape == (10, 1, 8, 8)
