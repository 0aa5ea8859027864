"""Serving your own checkpoint (issue 25 item 4): `debm export` writes a folder, `debm remote
models add NAME DIR` packs it as tar and POST /models/{name}/versions registers it as the next
version on a running server, which then serves it.  Archives that break a rule are refused
with a 4xx that says which rule, and nothing is registered."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import zipfile

import httpx
import pytest

from service.checkpoint_upload import CheckpointRejected, unpack_checkpoint
from tests.support import API_KEY, PYTHON, REPO, USE_KEY

pytestmark = pytest.mark.system
DIGIT = REPO / "examples" / "digit-7.png"


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "mine"
    done = subprocess.run([PYTHON, "-m", "debm.cli", "export", "--checkpoint",
                           str(tiny_checkpoint), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return out


def _remote(live, *args):
    env = {**os.environ, "DEBM_API_KEY": API_KEY}
    return subprocess.run([PYTHON, "-m", "debm.cli", "remote", *args, "--url", live.base],
                          capture_output=True, text=True, timeout=300, check=False, env=env)


def _score(live, model: str) -> float:
    with live.client() as http:
        response = http.post("/ood-score", params={"model": model, "wait": 60},
                             files=[("files", ("digit-7.png", DIGIT.read_bytes()))])
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["score"]


def _tar(members: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            bundle.addfile(info)
    return buffer.getvalue()


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_export_then_models_add_serves_the_checkpoint(live, exported):
    done = _remote(live, "models", "add", "uploaded", str(exported))
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["name"] == "uploaded" and record["version"] == 1
    assert "uploaded as uploaded.tar by key tester" in record["note"]
    # The same weights as demo:1 (the live server's seed is the same tiny checkpoint).
    assert _score(live, "uploaded:1") == pytest.approx(_score(live, "demo:1"), rel=1e-6)

    # The folder itself, warmup/ sub-checkpoint and leading folder included, as curl sends it.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        bundle.add(exported, arcname="mine")
    with live.client() as http:
        response = http.post("/models/uploaded/versions", params={"make_default": "true"},
                             files={"file": ("mine.tar.gz", buffer.getvalue())})
        assert response.status_code == 201, response.text
        assert response.json()["version"] == 2
        models = {m["name"]: m for m in http.get("/models").json()["models"]}
    assert models["uploaded"]["default_version"] == 2
    assert [v["version"] for v in models["uploaded"]["versions"]] == [1, 2]


def _corrupt(files: dict[str, bytes]) -> dict[str, bytes]:
    weights = next(n for n in files if n.startswith("model-"))
    data = bytearray(files[weights])
    data[-1] ^= 0xFF
    return {**files, weights: bytes(data)}


BAD = {
    "escape": (lambda f: _tar({**f, "../evil.safetensors": b"x"}), 422, "unsafe path"),
    "absolute": (lambda f: _tar({**f, "/tmp/evil.safetensors": b"x"}), 422, "unsafe path"),
    "symlink": (lambda f: _tar(f, links={"extra.safetensors": "/etc/passwd"}), 422,
                "symlink"),
    "pickle": (lambda f: _tar({**f, "model.pt": b"\x80\x04."}), 422, "safetensors files only"),
    "unlisted": (lambda f: _tar({**f, "extra.safetensors": b"{}"}), 422, "not listed"),
    "checksum": (lambda f: _tar(_corrupt(f)), 422, "checksum"),
    "no-manifest": (lambda f: _tar({k: v for k, v in f.items() if k != "checkpoint.json"}),
                    422, "no checkpoint.json"),
    "not-archive": (lambda f: b"just some bytes, not an archive" * 10, 415, "not a .tar"),
    "zip-symlink": (lambda f: _zip_with_symlink(f), 422, "symlink"),
}


def _zip_with_symlink(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
        link = zipfile.ZipInfo("link.safetensors")
        link.external_attr = (0o120777 << 16)
        bundle.writestr(link, "/etc/passwd")
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_checkpoint_archives_are_refused(live, exported, name):
    build, status, words = BAD[name]
    with live.client() as http:
        response = http.post(f"/models/bad-{name}/versions",
                             files={"file": (f"{name}.tar", build(_files(exported)))})
        assert response.status_code == status, response.text
        assert words in response.json()["detail"]
        assert f"bad-{name}" not in {m["name"] for m in http.get("/models").json()["models"]}
    leftovers = [p.name for p in (live.data_dir / "models").iterdir()
                 if p.name.startswith(".upload-")]
    assert leftovers == []


def test_a_use_key_cannot_add_a_version(live, exported):
    response = httpx.post(f"{live.base}/models/x/versions", headers={"X-API-Key": USE_KEY},
                          files={"file": ("x.tar", _tar(_files(exported)))}, timeout=60)
    assert response.status_code == 403, response.text


def test_unpacking_stops_at_the_byte_limit_while_copying(tmp_path, exported):
    """The bytes are counted as they are copied (no member header is trusted), so an
    archive that unpacks to more than the limit is refused part-way: 413."""
    archive = io.BytesIO(_tar(_files(exported)))
    total = sum(len(v) for v in _files(exported).values())
    with pytest.raises(CheckpointRejected) as refused:
        unpack_checkpoint(archive, tmp_path / "out", max_bytes=total - 1)
    assert refused.value.status == 413
    unpack_checkpoint(io.BytesIO(_tar(_files(exported))), tmp_path / "ok", max_bytes=total)
    digest = hashlib.sha256((tmp_path / "ok" / "checkpoint.json").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(_files(exported)["checkpoint.json"]).hexdigest()
