"""POST /datasets: zips of images and .npz arrays are validated member by member before they
are stored; a stored dataset trains with the real task code."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from tests.support import (KEY_HEADERS, digit_png, image_bytes, image_zip,
                           multipart_fields_only, npz_bytes, tiny_total_steps)

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


def test_bad_datasets_are_refused_with_the_reason(make_client):
    client = make_client(max_dataset_images=20)
    nested = image_zip({"inner.zip": image_zip({"a.png": digit_png()})})
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.png", b"\0" * 5_000_000)
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    object_npz = image_zip({"x.npy": objects.getvalue()})
    cases = {
        "traversal.zip": (image_zip({"../../evil.png": digit_png()}), 422, "unsafe path"),
        "absolute.zip": (image_zip({"/etc/evil.png": digit_png()}), 422, "unsafe path"),
        "nested.zip": (nested, 422, "nested archive"),
        "bomb.zip": (bomb.getvalue(), 413, "zip bomb"),
        "text.zip": (image_zip({"readme.txt": b"hi"}), 415, "not a PNG"),
        "badimg.zip": (image_zip({"a.png": b"not png"}), 415, "a.png"),
        "alpha.zip": (image_zip({"a.png": image_bytes("PNG", mode="RGBA")}), 422, "alpha"),
        "empty.zip": (image_zip({}), 422, "no images"),
        "many.zip": (image_zip({f"{i}.png": digit_png(i) for i in range(21)}), 413, "20"),
        "plain.bin": (b"just some bytes", 415, "not a zip"),
        "broken.zip": (b"PK\x03\x04 and then nothing", 422, "zip"),
        "objects.npz": (object_npz, 422, "objects"),
        "nan.npz": (npz_bytes(x=np.full((4, 8, 8), np.nan, dtype=np.float32)), 422, "NaN"),
        "complex.npz": (npz_bytes(x=np.zeros((4, 8, 8), dtype=np.complex64)), 422, "dtype"),
        "range.npz": (npz_bytes(x=np.full((4, 8, 8), 300, dtype=np.int32)), 422, "0..255"),
        "floats.npz": (npz_bytes(x=np.full((4, 8, 8), -5.0, dtype=np.float32)), 422, "span"),
        "shape.npz": (npz_bytes(x=np.zeros((4, 8), dtype=np.uint8)), 422, "shape"),
        "channels.npz": (npz_bytes(x=np.zeros((4, 5, 8, 8), dtype=np.uint8)), 422,
                         "channels"),
        "nokey.npz": (npz_bytes(labels=np.zeros(4, dtype=np.uint8)), 422, "no image array"),
        "toomany.npz": (npz_bytes(x=np.zeros((21, 8, 8), dtype=np.uint8)), 413, "limit"),
    }
    for name, (data, status, words) in cases.items():
        response = upload(client, name, data)
        assert response.status_code == status, (name, response.text)
        assert words in response.json()["detail"], (name, response.json())
    assert client.get("/datasets", headers=H).json()["datasets"] == []


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
