"""`debm remote` against a live `debm serve`: real processes, the key from a file or the
environment, progress from the event stream, images saved."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from PIL import Image

from tests.support import API_KEY, PYTHON, REPO, USE_KEY

pytestmark = pytest.mark.system


def remote(live, *args: str, key: str = API_KEY, check: bool = True, **env: str):
    full = {**os.environ, "OMP_NUM_THREADS": "1", "DEBM_API_KEY": key, **env}
    run = subprocess.run([PYTHON, "-m", "debm.cli", "remote", args[0], "--url", live.base,
                          *args[1:]], cwd=REPO, env=full, capture_output=True, text=True,
                         timeout=600)
    if check:
        assert run.returncode == 0, run.stderr
    return run


def test_score_models_jobs_cancel_default(live, tmp_path):
    rows = json.loads(remote(live, "score", "examples/digit-7.png",
                             "examples/photo.jpg").stdout)
    assert [r["file"] for r in rows] == ["examples/digit-7.png", "examples/photo.jpg"]
    assert rows[1]["is_ood"] is True and isinstance(rows[0]["score"], float)

    models = json.loads(remote(live, "models", "--json").stdout)
    assert models["default_model"] == "demo"
    assert "demo (default model)" in remote(live, "models").stdout

    queued = json.loads(remote(live, "generate", "--n", "2", "--steps-latent", "2000",
                               "--steps-pixel", "2000", "--no-wait").stdout)
    listing = remote(live, "jobs", "--kind", "generate").stdout
    assert queued["job_id"] in listing and "status" in listing.splitlines()[0]
    cancelled = json.loads(remote(live, "cancel", queued["job_id"]).stdout)
    assert cancelled["status"] in ("cancelled", "running") and cancelled["cancel_requested"]

    # errors: one line, exit 2, the server's status and message
    run = remote(live, "default", "demo", "1", key=USE_KEY, check=False)
    assert run.returncode == 2 and "403" in run.stderr and "admin" in run.stderr
    run = remote(live, "score", "nonexistent.png", check=False)
    assert run.returncode == 2 and "nonexistent.png: no such file" in run.stderr
    # the key from a file; none at all is a clear error
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    assert remote(live, "models", "--key-file", str(key_file), key="").returncode == 0
    run = remote(live, "models", "--key-file", str(tmp_path / "none"), key="", check=False)
    assert run.returncode == 2 and "no API key" in run.stderr


def test_generate_and_train_with_progress_from_events(live, tmp_path):
    run = remote(live, "generate", "--n", "4", "--seed", "3", "--steps-latent", "40",
                 "--steps-pixel", "40", "--out", str(tmp_path / "grid.png"),
                 "--samples-dir", str(tmp_path / "samples"), "--previews",
                 str(tmp_path / "previews"), "--progress", "plain")
    summary = json.loads(run.stdout)
    assert summary["n"] == 4 and summary["steps"] == 80
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] > 8
    assert len(list((tmp_path / "samples").glob("sample-*.png"))) == 4
    previews = sorted(p.name for p in (tmp_path / "previews").glob("preview-*.png"))
    # at least each stage's last state (h(z_K) at step 40, the samples at 80); more when
    # the chain is slower than one preview per worker.progress_events.PREVIEW_MIN_SECONDS
    assert {"preview-000040.png", "preview-000080.png"} <= set(previews), previews
    lines = run.stderr.splitlines()
    assert any(line.startswith("generate latent ") for line in lines), run.stderr
    assert any(line.startswith("generate pixel 80/80") for line in lines), run.stderr

    run = remote(live, "train", "--dataset", "examples/digits.zip", "--preset", "tiny",
                 "--set", "training.warmup_steps=2", "training.iterations=2", "--name",
                 "remotecli", "--out-dir", str(tmp_path / "run"), "--progress", "plain")
    summary = json.loads(run.stdout)
    assert summary["model"] == "remotecli:1" and summary["step"] == 4
    assert "uploaded examples/digits.zip as ds_" in run.stderr
    assert "train contrastive 4/4" in run.stderr, run.stderr
    grids = sorted(p.name for p in (tmp_path / "run" / "grids").glob("*.png"))
    assert grids == ["grid-000002.png", "grid-000004.png"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4]

    # a failing job: exit 2 with the job's error
    run = remote(live, "generate", "--n", "1", "--model", "demo:9", check=False)
    assert run.returncode == 2 and "404" in run.stderr
