"""The API process must never import torch (the API image has none)."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO

CODE = r"""
import sys, io, zipfile
import numpy as np
from PIL import Image
from fastapi.testclient import TestClient
from service.app import create_app
from core.settings import Settings

settings = Settings(data_dir=sys.argv[1], seed_checkpoint=sys.argv[2],
                    admin_keys="k:0123456789abcdef0123")
h = {"X-API-Key": "0123456789abcdef0123"}
with TestClient(create_app(settings)) as c:
    buf = io.BytesIO(); Image.new("L", (20, 20)).save(buf, format="PNG")
    assert c.post("/ood-score?wait=0", files={"files": ("a.png", buf.getvalue())},
                  headers=h).status_code == 202
    assert c.post("/generate", json={"n": 1}, headers=h).status_code == 202
    assert c.post("/train", json={"dataset": "mnist5k", "preset": "tiny"},
                  headers=h).status_code == 202
    npz = io.BytesIO(); np.savez(npz, x=np.zeros((3, 8, 8), np.uint8))
    assert c.post("/datasets", files={"file": ("d.npz", npz.getvalue())},
                  headers=h).status_code == 201
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as archive:
        archive.writestr("a.png", buf.getvalue())
    assert c.post("/datasets", files={"file": ("d.zip", z.getvalue())},
                  headers=h).status_code == 201
    for path in ("/models", "/jobs", "/datasets"):
        assert c.get(path, headers=h).status_code == 200
    assert c.get("/readyz").status_code == 503
import core.queue  # the producer the API sends tasks with
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
"""


def test_api_process_never_imports_torch(tmp_path, tiny_checkpoint):
    result = subprocess.run([sys.executable, "-c", CODE, str(tmp_path), str(tiny_checkpoint)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("NO-TORCH"), result.stdout
