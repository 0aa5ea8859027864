"""keep_freed_memory: the glibc thresholds are set once, and serving preparation sets them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    from model.allocator import keep_freed_memory
    first, second = keep_freed_memory(), keep_freed_memory()
    print(first, second)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux") or
                    __import__("platform").libc_ver()[0] != "glibc", reason="glibc mallopt")
def test_thresholds_apply_once_in_a_fresh_process():
    # A fresh process, so that this test does not depend on which tests ran before.  The
    # speed it buys (no page faults per forward) is measured in docs/PERFORMANCE.md; a fault
    # count depends on the allocation history and is not asserted here.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=120, cwd=REPO).stdout.split()
    assert out == ["True", "True"]


def test_serving_preparation_applies_it(tiny_checkpoint):
    from model import allocator
    from model.checkpoints import load_checkpoint
    from model.pipeline import InferenceOptions, prepare_for_inference

    prepared = prepare_for_inference(load_checkpoint(tiny_checkpoint))
    assert prepared.inference.keep_freed_memory
    assert allocator._applied is not None  # attempted (True on glibc)
    off = prepare_for_inference(load_checkpoint(tiny_checkpoint),
                                InferenceOptions(keep_freed_memory=False))
    assert not off.inference.keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or
                    __import__("platform").libc_ver()[0] != "glibc", reason="glibc mallopt")
def test_the_worker_app_applies_it_before_its_pool_starts(tmp_path):
    # The Celery CLI builds the app in the main thread, before the pool's threads exist; a
    # thread started later shares the main heap (one arena) instead of faulting its own in.
    probe = textwrap.dedent("""
        from model import allocator
        assert allocator._applied is None
        from worker.celery_app import get_worker_app
        get_worker_app()
        print(allocator._applied)
    """)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("DEBM_")}
    env.update(DEBM_DATA_DIR=str(tmp_path), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120, cwd=REPO, env=env).stdout.split()
    assert out[0] == "True"
