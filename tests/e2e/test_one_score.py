"""One score whatever the path (issue 25 item 3): the same files scored by `debm score` (the
CLI, in-process model), by the Python client and by a raw HTTP POST /ood-score against a live
server give the same scores.  The files are real JPEG, PNG (RGB, RGBA, L, P, 16-bit grey) and
WebP encoded by Pillow, of sizes that make every path shrink, resize and pad."""

from __future__ import annotations

import io
import json
import subprocess

import httpx
import numpy as np
import pytest
from PIL import Image

from debm.client import Client
from tests.support import API_KEY, PYTHON, REPO

pytestmark = pytest.mark.system

# docs/OPERATIONS.md: merging requests into one forward pass moves a score by 1-2 ulp; the
# batching tests allow 1e-6 relative, and so does this one.
REL = 1e-6


def _photo(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A smooth colour scene with noise (seeded), so JPEG's DCT scaling changes pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    return np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image_set() -> dict[str, bytes]:
    rgb = Image.fromarray(_photo(1, (200, 150)))
    rgba = Image.fromarray(np.dstack([_photo(2, (64, 64)),
                                      np.tile(np.linspace(0, 255, 64, dtype=np.uint8),
                                              (64, 1))]), mode="RGBA")
    grey = Image.fromarray(_photo(3, (40, 90))[..., 0])
    deep = Image.fromarray((np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16))
    files = {
        "photo.jpg": (REPO / "examples" / "photo.jpg").read_bytes(),
        "scene.jpg": _encode(rgb, "JPEG", quality=90),
        "scene.png": _encode(rgb, "PNG"),
        "alpha.png": _encode(rgba, "PNG"),
        "grey.png": _encode(grey, "PNG"),
        "palette.png": _encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "deep.png": _encode(deep, "PNG"),
        "scene.webp": _encode(rgb, "WEBP", quality=80),
        "digit-7.png": (REPO / "examples" / "digit-7.png").read_bytes(),
    }
    modes = {name: Image.open(io.BytesIO(data)).mode for name, data in files.items()}
    assert modes["alpha.png"] == "RGBA" and modes["grey.png"] == "L"
    assert modes["palette.png"] == "P" and modes["deep.png"].startswith("I;16")
    return files


def test_cli_client_and_http_give_the_same_scores(live, tiny_checkpoint, tmp_path):
    files = image_set()
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)

    cli = subprocess.run([PYTHON, "-m", "debm.cli", "score", "--checkpoint",
                          str(tiny_checkpoint), *map(str, paths)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 0, cli.stderr
    by_cli = {row["file"].rsplit("/", 1)[-1]: row["score"] for row in json.loads(cli.stdout)}

    with Client(live.base, API_KEY) as api:
        by_client = {r.filename: r.score for r in api.score(paths, timeout=120).results}

    response = httpx.post(f"{live.base}/ood-score", headers={"X-API-Key": API_KEY},
                          params={"wait": 120}, timeout=180,
                          files=[("files", (name, data)) for name, data in files.items()])
    assert response.status_code == 200, response.text
    by_http = {r["filename"]: r["score"] for r in response.json()["results"]}

    assert set(by_cli) == set(by_client) == set(by_http) == set(files)
    for name in files:
        assert by_client[name] == pytest.approx(by_cli[name], rel=REL), name
        assert by_http[name] == pytest.approx(by_cli[name], rel=REL), name
    # The set is not degenerate: the files score differently from each other.
    assert len({round(score, 4) for score in by_cli.values()}) >= len(files) - 1
