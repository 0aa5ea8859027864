"""`debm remote generate` shows a queued job's place from the event stream's `queue` events
(a live `debm serve`, real processes)."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from debm.client import Client
from tests.support import API_KEY, PYTHON, REPO, wait_until

pytestmark = pytest.mark.system


def test_remote_generate_notes_the_queue_position(live, tmp_path):
    with Client(live.base, API_KEY) as api:
        long = api.generate(n=1, seed=4401, steps_latent=2000, steps_pixel=1500, wait=False)
        wait_until(lambda: api.job(long.job_id).status == "running", timeout=60,
                   what="the long job to run")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DEBM_API_KEY": API_KEY}
        proc = subprocess.Popen([PYTHON, "-m", "debm.cli", "remote", "generate", "--url",
                                 live.base, "--n", "1", "--seed", "4402", "--out",
                                 str(tmp_path / "grid.png"), "--progress", "plain"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
        reader.start()
        try:
            wait_until(lambda: any(line.startswith("queued: position 1 in inference")
                                   for line in lines), timeout=60, what="the queue note")
        finally:
            api.cancel(long.job_id)  # the queued one runs next
        code = proc.wait(120)
        reader.join(10)
        proc.stdout.close()
        proc.stderr.close()
        assert code == 0, "".join(lines)
    note = next(line for line in lines if line.startswith("queued:"))
    assert "(estimate)" in note or "starts in" not in note
    assert (tmp_path / "grid.png").is_file()
