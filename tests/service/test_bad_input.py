"""Every kind of bad input of docs/OPERATIONS.md, built for real (Pillow, zipfile, numpy), sent through
the real app: each one gets a 4xx JSON error that names the problem, and none reaches a
worker (no job is created, nothing is stored)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.support import KEY_HEADERS
from tests.support.images import (animated_png, digit_png, image_bytes,
                                  image_zip, npz_bytes, png_16bit)

H = KEY_HEADERS


# --- builders -------------------------------------------------------------------------------

def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def frames(fmt: str) -> bytes:
    images = [Image.new("RGB", (16, 16), colour) for colour in ((0, 0, 0), (255, 0, 0))]
    return save(images[0], fmt, save_all=True, append_images=images[1:])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height over a few bytes of data: a bomb that
    Pillow must refuse from the header, before allocating anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def corrupt_png() -> bytes:
    data = bytearray(image_bytes("PNG", size=(32, 32)))
    data[len(data) // 2] ^= 0xFF  # inside IDAT: the chunk CRC no longer matches
    return bytes(data)


def corrupt_png_header() -> bytes:
    data = bytearray(image_bytes("PNG", size=(32, 32)))
    data[29] ^= 0xFF  # the IHDR chunk's CRC: Pillow cannot even identify the file
    return bytes(data)


def palette_with_transparency() -> bytes:
    image = Image.new("P", (16, 16))
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    return save(image, "PNG", transparency=0)


def encrypted_zip() -> bytes:
    """A zip whose member carries the 'encrypted' flag (zipfile cannot write encryption;
    the flag is what a reader acts on)."""
    data = bytearray(image_zip({"a.png": digit_png()}))
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    data[local + 6] |= 0x1
    data[central + 8] |= 0x1
    return bytes(data)


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.png", b"\0" * 5_000_000)  # 5 MB in a few kB
    return buffer.getvalue()


def npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def truncated_npz() -> bytes:
    whole = npy(np.zeros((4, 8, 8), dtype=np.uint8))
    return image_zip({"x.npy": whole[:-100]})


# --- images: POST /ood-score ----------------------------------------------------------------

IMAGES = {
    # name: (bytes, status, words the message must contain)
    "notes.txt": (lambda: b"hello, not an image", 415, "accepted formats"),
    "paper.pdf": (lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", 415, "accepted formats"),
    "array.npy": (lambda: npy(np.zeros((8, 8), np.uint8)), 415, "accepted formats"),
    "bitmap.bmp": (lambda: save(Image.new("L", (8, 8)), "BMP"), 415, "accepted formats"),
    "empty.png": (lambda: b"", 422, "empty"),
    "cut.png": (lambda: digit_png()[:60], 422, "truncated"),
    "cut.jpg": (lambda: image_bytes("JPEG", size=(64, 64))[:300], 422, "truncated"),
    "crc.png": (corrupt_png, 422, "corrupt"),
    "crc-header.png": (corrupt_png_header, 422, "corrupt or truncated"),
    "cut-header.png": (lambda: digit_png()[:20], 422, "corrupt or truncated"),
    "bomb.png": (lambda: save(Image.new("1", (12000, 12000)), "PNG"), 413, "too large"),
    "header-bomb.png": (lambda: png_header_only(100_000, 100_000), 413, "pixels"),
    "huge.png": (lambda: save(Image.new("1", (5000, 4000)), "PNG"), 413, "pixels"),
    "anim.gif": (lambda: frames("GIF"), 415, "accepted formats"),
    "anim.png": (animated_png, 422, "multi-frame"),
    "anim.webp": (lambda: frames("WEBP"), 422, "multi-frame"),
    "pages.tiff": (lambda: frames("TIFF"), 415, "accepted formats"),
    "float.tiff": (lambda: save(Image.new("F", (8, 8)), "TIFF"), 415, "accepted formats"),
}


# Scored, not refused (issue 25 item 3): transparency is composited onto black and 16-bit grey
# PNG scaled to 8 bits, on every scoring path alike (tests/e2e/test_one_score.py).
SCORED = {"deep.png": png_16bit, "rgba.png": lambda: image_bytes("PNG", mode="RGBA"),
          "grey-alpha.png": lambda: image_bytes("PNG", mode="LA"),
          "palette-alpha.png": palette_with_transparency,
          "rgba.webp": lambda: image_bytes("WEBP", mode="RGBA")}


@pytest.mark.parametrize("name", sorted(SCORED))
def test_alpha_and_16_bit_images_are_accepted_for_scoring(client, name):
    response = client.post("/ood-score", params={"wait": 0}, headers=H,
                           files=[("files", (name, SCORED[name](), "image/png"))])
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_bad_images_are_4xx_naming_file_and_problem(client, services, name):
    """Default limits (DEBM_MAX_IMAGE_PIXELS = 4096^2): the bombs are refused from their
    headers, before any pixel is decoded."""
    build, status, words = IMAGES[name]
    response = client.post("/ood-score", params={"wait": 0}, headers=H,
                           files=[("files", ("ok.png", digit_png(), "image/png")),
                                  ("files", (name, build(), "application/octet-stream"))])
    assert response.status_code == status, (name, response.text)
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert name in detail and words in detail, (name, detail)
    assert services.store.list() == []  # nothing reached a worker
    assert list(services.data.uploads.iterdir()) == []


def test_image_count_and_bytes_are_limited(make_client):
    client = make_client(max_images_per_request=2, max_upload_bytes=8192)
    files = [("files", (f"{i}.png", digit_png(i), "image/png")) for i in range(3)]
    response = client.post("/ood-score", files=files, params={"wait": 0}, headers=H)
    assert response.status_code == 413 and "2" in response.json()["detail"]
    big = image_bytes("PNG", size=(100, 100))  # noise: ~10 kB
    response = client.post("/ood-score", files={"files": ("big.png", big)}, headers=H)
    assert response.status_code == 413 and "8192" in response.json()["detail"]


# --- datasets: POST /datasets ---------------------------------------------------------------

DATASETS = {
    "traversal.zip": (lambda: image_zip({"../../evil.png": digit_png()}), 422, "unsafe path"),
    "absolute.zip": (lambda: image_zip({"/etc/evil.png": digit_png()}), 422, "unsafe path"),
    "backslash.zip": (lambda: image_zip({"..\\evil.png": digit_png()}), 422, "unsafe path"),
    "drive.zip": (lambda: image_zip({"C:/evil.png": digit_png()}), 422, "unsafe path"),
    "bomb.zip": (zip_bomb, 413, "zip bomb"),
    "nested-zip.zip": (lambda: image_zip({"inner.zip": image_zip({"a.png": digit_png()})}),
                       422, "nested archive"),
    "nested-tgz.zip": (lambda: image_zip({"more.tar.gz": b"\x1f\x8b" + b"\0" * 20}), 422,
                       "nested archive"),
    "nested-npz.zip": (lambda: image_zip({"arrays.npz": npz_bytes(x=np.zeros((2, 8, 8)))}),
                       422, "nested archive"),
    "encrypted.zip": (encrypted_zip, 422, "encrypted"),
    "text.zip": (lambda: image_zip({"readme.txt": b"hi"}), 415, "not a PNG"),
    "badimg.zip": (lambda: image_zip({"a.png": b"not png"}), 415, "a.png"),
    "cut.zip": (lambda: image_zip({"cut.png": digit_png()[:60]}), 422, "truncated"),
    "alpha.zip": (lambda: image_zip({"a.png": image_bytes("PNG", mode="RGBA")}), 422,
                  "alpha"),
    "anim.zip": (lambda: image_zip({"a.webp": frames("WEBP")}), 422, "multi-frame"),
    "imgbomb.zip": (lambda: image_zip({"a.png": png_header_only(100_000, 100_000)}), 413,
                    "pixels"),
    "empty.zip": (lambda: image_zip({}), 422, "no images"),
    "plain.bin": (lambda: b"just some bytes", 415, "not a zip"),
    "array.npy": (lambda: npy(np.zeros((4, 8, 8), np.uint8)), 415, "not a zip"),
    "broken.zip": (lambda: b"PK\x03\x04 and then nothing", 422, "zip"),
    "objects.npz": (lambda: image_zip({"x.npy": npy(np.array([{"a": 1}], dtype=object),
                                                    allow_pickle=True)}), 422, "objects"),
    "complex.npz": (lambda: npz_bytes(x=np.zeros((4, 8, 8), dtype=np.complex64)), 422,
                    "dtype"),
    "bool.npz": (lambda: npz_bytes(x=np.zeros((4, 8, 8), dtype=bool)), 422, "dtype"),
    "strings.npz": (lambda: npz_bytes(x=np.full((4, 8, 8), "a")), 422, "dtype"),
    "dates.npz": (lambda: npz_bytes(x=np.zeros((4, 8, 8), dtype="datetime64[s]")), 422,
                  "dtype"),
    "records.npz": (lambda: npz_bytes(x=np.zeros((4, 8, 8), dtype=[("a", "u1"), ("b", "f4")])),
                    422, "dtype"),
    "nan.npz": (lambda: npz_bytes(x=np.full((4, 8, 8), np.nan, dtype=np.float32)), 422, "NaN"),
    "inf.npz": (lambda: npz_bytes(x=np.full((4, 8, 8), np.inf, dtype=np.float64)), 422,
                "infinity"),
    "range.npz": (lambda: npz_bytes(x=np.full((4, 8, 8), 300, dtype=np.int32)), 422, "0..255"),
    "negative.npz": (lambda: npz_bytes(x=np.full((4, 8, 8), -5.0, dtype=np.float32)), 422,
                     "span"),
    "shape.npz": (lambda: npz_bytes(x=np.zeros((4, 8), dtype=np.uint8)), 422, "shape"),
    "channels.npz": (lambda: npz_bytes(x=np.zeros((4, 5, 8, 8), dtype=np.uint8)), 422,
                     "channels"),
    "noimages.npz": (lambda: npz_bytes(x=np.zeros((0, 8, 8), dtype=np.uint8)), 422,
                     "no images"),
    "nokey.npz": (lambda: npz_bytes(labels=np.zeros(4, dtype=np.uint8)), 422,
                  "no image array"),
    "traversal.npz": (lambda: image_zip({"../x.npy": npy(np.zeros((4, 8, 8), np.uint8))}),
                      422, "not a flat"),
    "truncated.npz": (truncated_npz, 422, "truncated"),
    "toomany.npz": (lambda: npz_bytes(x=np.zeros((21, 8, 8), dtype=np.uint8)), 413, "limit"),
    "toomany.zip": (lambda: image_zip({f"{i}.png": digit_png(i) for i in range(21)}), 413,
                    "20"),
    "hugeimages.npz": (lambda: npz_bytes(x=np.zeros((1, 200, 200), dtype=np.uint8)), 413,
                       "pixels"),
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_bad_datasets_are_4xx_naming_the_problem(make_client, name):
    client = make_client(max_dataset_images=20, max_image_pixels=128 * 128)
    services = client.app.state.services
    build, status, words = DATASETS[name]
    response = client.post("/datasets", headers=H,
                           files={"file": (name, build(), "application/octet-stream")})
    assert response.status_code == status, (name, response.text)
    assert words in response.json()["detail"], (name, response.json())
    assert list(services.data.datasets.iterdir()) == []  # nothing stored, no staging left


# --- parameters -----------------------------------------------------------------------------

GENERATE = [
    ({"n": 0}, 422, "n"), ({"n": -1}, 422, "n"), ({"n": 10 ** 30}, 422, "n"),
    ({"n": 1.5}, 422, "n"), ({"n": "many"}, 422, "n"), ({"n": None}, 422, "n"),
    ({"n": 1, "seed": -1}, 422, "seed"), ({"n": 1, "seed": 2 ** 64}, 422, "seed"),
    ({"n": 1, "steps_pixel": 10 ** 6}, 422, "steps_pixel"),
    ({"n": 1, "steps_latent": -3}, 422, "steps_latent"),
    ({"n": 1, "step_size_pixel": 0}, 422, "step_size_pixel"),
    ({"n": 1, "step_size_latent": 1e9}, 422, "step_size_latent"),
    ({"n": 1, "sampler": "magic"}, 422, "sampler"),
    ({"n": 1, "model": "../../etc"}, 422, "model"), ({"n": 1, "model": "demo:0"}, 422, "model"),
    ({"n": 1, "model": "ghost"}, 404, "ghost"), ({"n": 1, "model": "demo:7"}, 404, "version 7"),
    ({"n": 1, "colour": "red"}, 422, "colour"), ([1, 2], 422, "body"),
]


@pytest.mark.parametrize("body, status, words", GENERATE, ids=[str(c[0]) for c in GENERATE])
def test_bad_generate_parameters(client, services, body, status, words):
    response = client.post("/generate", json=body, headers=H)
    assert response.status_code == status, response.text
    assert words in response.text
    assert services.store.list() == []


@pytest.mark.parametrize("raw, field", [
    (b'{"n": 1, "step_size_pixel": NaN}', "step_size_pixel"),
    (b'{"n": 1, "step_size_latent": Infinity}', "step_size_latent"),
    (b'{"n": 1, "step_size_pixel": -Infinity}', "step_size_pixel"),
    (b'{"n": NaN}', "n"), (b'{"n": 1,', "json"), (b"\xff\xfe", "json"),
])
def test_non_finite_and_malformed_json_is_422(client, raw, field):
    response = client.post("/generate", content=raw,
                           headers={**H, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in response.text.lower()


@pytest.mark.parametrize("query", ["wait=-1", "wait=1e9", "wait=nan", "wait=inf", "wait=soon"])
def test_bad_wait_is_422(client, query):
    response = client.post(f"/generate?{query}", json={"n": 1}, headers=H)
    assert response.status_code == 422 and "wait" in response.text


TRAIN = [
    ({"dataset": "imagenet"}, 404, "unknown dataset"),
    ({"dataset": "ds_0123456789abcdef"}, 404, "unknown dataset"),
    ({"dataset": "../../etc"}, 422, "dataset"),
    ({"preset": "huge"}, 422, "preset"),
    ({"name": "Bad Name"}, 422, "name"),
    ({"seed": -1}, 422, "seed"),
    ({"overrides": {"training": {"lr": -1}}}, 422, "lr"),
    ({"overrides": {"training": {"lr": "fast"}}}, 422, "lr"),
    ({"overrides": {"training": {"batch_size": 2.5}}}, 422, "batch_size"),
    ({"overrides": {"warp": {"x": 1}}}, 422, "warp"),
    ({"overrides": {"training": {"warp": 1}}}, 422, "warp"),
    ({"overrides": {"training": "fast"}}, 422, "overrides"),
    ({"overrides": {"training": {"iterations": 10 ** 9}}}, 422, "DEBM_MAX_TRAINING_STEPS"),
    ({"overrides": {"network": {"image_size": 4096}}}, 422, "DEBM_MAX_TRAINING_IMAGE_SIZE"),
    ({"overrides": {"network": {"base_width": 4096, "groups": 8}}}, 422,
     "DEBM_MAX_TRAINING_WIDTH"),
    ({"overrides": {"training": {"batch_size": 10 ** 6}}}, 422, "DEBM_MAX_TRAINING_BATCH"),
    ({"overrides": {"training": {"steps_pixel": 10 ** 6}}}, 422, "DEBM_MAX_GENERATE_STEPS"),
    ({"overrides": {"data": {"dataset": "/etc"}}}, 422, "dataset"),
    ({"overrides": {"data": {"holdout_fraction": 2}}}, 422, "holdout_fraction"),
]


@pytest.mark.parametrize("fields, status, words", TRAIN, ids=[str(c[0]) for c in TRAIN])
def test_bad_training_requests(client, services, fields, status, words):
    body = {"dataset": "mnist5k", "preset": "tiny", **fields}
    response = client.post("/train", json=body, headers=H)
    assert response.status_code == status, response.text
    assert words in response.text
    assert services.store.list() == []


def test_non_finite_training_override_is_422(client):
    response = client.post("/train", content=b'{"dataset": "mnist5k", "preset": "tiny", '
                           b'"overrides": {"training": {"lr": NaN}}}',
                           headers={**H, "content-type": "application/json"})
    assert response.status_code == 422 and "finite" in response.text


def test_unknown_models_for_scoring(client):
    """(Unknown models for PUT /models/{name}/default: test_routes.py.)"""
    one = [("files", ("a.png", digit_png(), "image/png"))]
    for model, status in (("ghost", 404), ("demo:9", 404), ("Ghost!", 422), ("demo:x", 422)):
        response = client.post("/ood-score", files=one, params={"model": model}, headers=H)
        assert response.status_code == status, (model, response.text)
        assert "ghost" in response.text.lower() or "demo" in response.text


def test_dataset_expansion_is_limited_to_four_times_the_upload_limit(make_client):
    """A zip of images that each compress well (but below the zip-bomb ratio) may not expand
    past 4 x DEBM_MAX_DATASET_BYTES in total."""
    client = make_client(max_dataset_bytes=64 * 1024)
    flat = save(Image.new("L", (100, 100)), "PNG", compress_level=0)  # ~10 kB, deflates well
    data = image_zip({f"{i}.png": flat for i in range(30)})
    assert len(data) < 64 * 1024
    response = client.post("/datasets", headers=H, files={"file": ("flat.zip", data)})
    assert response.status_code == 413, response.text
    assert "expands to" in response.json()["detail"]
    accepted = client.post("/datasets", headers=H,
                           files={"file": ("few.zip", image_zip({"a.png": flat}))})
    assert accepted.status_code == 201, accepted.text


def test_form_fields_are_limited(client):
    boundary = "b0undary"
    big = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n"
           + "x" * 70_000 + f"\r\n--{boundary}--\r\n").encode()
    many = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n"
                   for i in range(40)) + f"--{boundary}--\r\n"
    for body in (big, many.encode()):
        response = client.post("/ood-score", content=body, headers={
            **H, "content-type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413, response.text
        assert "form fields are limited" in response.json()["detail"]
