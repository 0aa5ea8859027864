"""core.scheduling: short threads under SCHED_BATCH, the model's work under the default policy.

Policies are read back from the kernel (os.sched_getscheduler of the calling thread), in a
fresh process each time so that no test leaves the pytest process's threads changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling")


def _probe(code: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEBM_")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=120, cwd=REPO, check=False,
                         env={**clean, "PYTHONPATH": str(REPO), **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


NAMES = """
    import os, threading
    NAME = {os.SCHED_OTHER: "other", os.SCHED_BATCH: "batch"}
    def policy():
        return NAME.get(os.sched_getscheduler(0), "?")
    def in_new_thread(fn):
        seen = []
        t = threading.Thread(target=lambda: seen.append(fn()))
        t.start(); t.join()
        return seen[0]
"""


def test_threads_started_after_inherit_batch_and_model_work_leaves_it():
    out = _probe(NAMES + """
    from core.scheduling import model_work, short_threads_yield
    print(policy())
    print(short_threads_yield())
    print(policy(), in_new_thread(policy))
    def inside():
        with model_work():
            during = policy()
        return during + "/" + policy()
    print(in_new_thread(inside))
    """)
    assert out == ["other", "True", "batch", "batch", "other/batch"]


def test_disabled_or_outside_batch_it_changes_nothing():
    out = _probe(NAMES + """
    from core.scheduling import model_work, short_threads_yield
    print(short_threads_yield(False), policy())
    with model_work():
        print(policy())
    print(policy())
    """)
    assert out == ["False", "other", "other", "other"]


def test_the_worker_app_applies_it_unless_turned_off(tmp_path):
    code = NAMES + """
    from worker.celery_app import get_worker_app
    get_worker_app()
    print(policy(), in_new_thread(policy))
    """
    assert _probe(code, DEBM_DATA_DIR=str(tmp_path)) == ["batch", "batch"]
    assert _probe(code, DEBM_DATA_DIR=str(tmp_path), DEBM_SHORT_THREADS_YIELD="false") == \
        ["other", "other"]


def test_the_batchers_forward_runs_under_the_default_policy(tiny_checkpoint):
    # The real _score_batch on the tiny model, called from a SCHED_BATCH thread; the policy
    # is read inside score_images by a wrapper that then calls the real function.
    out = _probe(NAMES + """
    import torch
    import model.pipeline as pipeline
    from core.scheduling import short_threads_yield
    from model.checkpoints import load_checkpoint
    from worker.runtime import _score_batch
    seen = []
    real = pipeline.score_images
    def spy(*args, **kwargs):
        seen.append(policy())
        return real(*args, **kwargs)
    pipeline.score_images = spy
    loaded = pipeline.prepare_for_inference(load_checkpoint(PATH))
    short_threads_yield()
    size = loaded.config.network.image_size
    x = torch.rand(2, loaded.config.network.channels, size, size,
                   generator=torch.Generator().manual_seed(0))
    key = ("tiny:1", id(loaded), 0.05, 2, 0)
    scores = in_new_thread(lambda: _score_batch(key, [(loaded, x[:1]), (loaded, x[1:])]))
    print(seen[0], policy(), [len(s) for s in scores])
    """.replace("PATH", repr(str(tiny_checkpoint))))
    assert out == ["other", "batch", "[1,", "1]"]
