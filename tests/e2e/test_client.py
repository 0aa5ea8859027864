"""debm.client (sync and async) against a live `debm serve`: typed results, the error
mapping to DebmError, 429 + Retry-After retries, connection failures and timeouts."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from PIL import Image

from debm.client import (AsyncClient, Client, DebmError, Generated, Job, Models, Scores,
                         Trained)
from tests.support import API_KEY, REPO, USE_KEY, wait_until
from tests.support.processes import free_port

from .conftest import start_serve

pytestmark = pytest.mark.system
EXAMPLES = REPO / "examples"
TINY_TRAIN = {"training": {"warmup_steps": 2, "iterations": 2}}


def test_sync_flow_with_typed_results(live):
    with Client(live.base, API_KEY) as api:
        out = api.generate(n=4, seed=3, timeout=120)
        assert isinstance(out, Generated) and out.model == "demo:1" and out.n == 4
        assert len(out.images) == 4 and all(isinstance(i, Image.Image) for i in out.images)
        assert out.images[0].size == (out.image_size, out.image_size)
        assert out.grid.size[0] > out.image_size
        # the same seed, the same images
        again = api.generate(n=4, seed=3, timeout=120)
        assert [i.tobytes() for i in again.images] == [i.tobytes() for i in out.images]

        scores = api.score([EXAMPLES / "digit-7.png", (EXAMPLES / "photo.jpg").read_bytes(),
                            out.images[0]])
        assert isinstance(scores, Scores) and scores.calibrated
        assert [r.filename for r in scores.results] == ["digit-7.png", "image-1",
                                                       "image-2.png"]
        assert all(isinstance(r.score, float) for r in scores.results)
        assert scores.results[1].is_ood is True

        dataset = api.upload_dataset(EXAMPLES / "digits.zip")
        assert dataset.count == 64 and dataset.dataset_id.startswith("ds_")
        job = api.train(dataset.dataset_id, preset="tiny", name="clientsync", seed=0,
                        overrides=TINY_TRAIN)
        assert isinstance(job, Job) and job.kind == "train" and not job.final
        final = api.wait(job.job_id, timeout=300)
        assert final.status == "succeeded", final.error
        trained = api.result(job.job_id)
        assert isinstance(trained, Trained) and trained.name == "clientsync"

        listed = api.jobs(kind="train")
        assert job.job_id in [j.job_id for j in listed]
        assert api.job(job.job_id).status == "succeeded"

        models = api.models()
        assert isinstance(models, Models) and models["clientsync"].default_version == 1
        assert api.set_default("clientsync", trained.version).default_version == \
            trained.version

        queued = api.generate(n=2, seed=9, steps_latent=2000, steps_pixel=2000, wait=False)
        assert queued.status in ("queued", "running")
        assert api.cancel(queued.job_id).status in ("cancelled", "running")
        assert api.wait(queued.job_id, timeout=120).status == "cancelled"
        with pytest.raises(DebmError) as failed:
            api.result(queued.job_id)
        assert failed.value.job.status == "cancelled"


def test_errors_carry_the_server_status_and_message(live):
    with Client(live.base, "not-a-valid-key-000000") as api:
        with pytest.raises(DebmError) as e:
            api.models()
    assert e.value.status == 401 and "API key" in e.value.message
    with Client(live.base, USE_KEY) as api:
        with pytest.raises(DebmError) as e:
            api.train("mnist5k", preset="tiny")
        assert e.value.status == 403 and "admin" in e.value.message
        with pytest.raises(DebmError) as e:
            api.job("0" * 32)
        assert e.value.status == 404
        with pytest.raises(DebmError) as e:
            api.generate(n=10_000)
        assert e.value.status == 422 and "body.n: n must be at most" in e.value.message
        assert isinstance(e.value.detail, list)
        with pytest.raises(DebmError) as e:
            api.score([b"not an image"])
        assert e.value.status == 415 and "image-0" in e.value.message
        with pytest.raises(DebmError) as e:
            api.set_default("demo", 1)
        assert e.value.status == 403
        with pytest.raises(DebmError) as e:
            api.generate(n=1, model="nosuchmodel")
        assert e.value.status == 404 and "nosuchmodel" in e.value.message


@pytest.fixture(scope="module")
def one_job_server(tmp_path_factory, tiny_checkpoint):
    """A server where each key may have one job queued or running (429 beyond)."""
    root = tmp_path_factory.mktemp("onejob")
    server = start_serve(root / "data", root, seed_checkpoint=tiny_checkpoint,
                         DEBM_MAX_QUEUED_JOBS_PER_KEY="1")
    yield server
    server.proc.kill()


def _long_job(api: Client) -> Job:
    return api.generate(n=2, seed=1, steps_latent=2000, steps_pixel=2000, wait=False)


def test_429_is_retried_after_retry_after_then_raised(one_job_server):
    server = one_job_server
    with Client(server.base, API_KEY, retries=2, max_retry_wait=0.2) as api:
        blocker = _long_job(api)
        try:
            started = time.monotonic()
            with pytest.raises(DebmError) as e:
                api.generate(n=1, wait=False)
            assert e.value.status == 429 and e.value.retry_after == 10
            assert time.monotonic() - started >= 0.4  # two waits, capped at 0.2 s each
            posts = server.proc.output().count('"POST /generate HTTP/1.1" 429')
            assert posts == 3  # the first try and two retries

            # A retry that succeeds: the blocking job is cancelled while the client waits.
            def unblock():
                with Client(server.base, API_KEY) as other:
                    other.cancel(blocker.job_id)

            timer = threading.Timer(1.0, unblock)
            timer.start()
            with Client(server.base, API_KEY, retries=5, max_retry_wait=1.0) as patient:
                job = patient.generate(n=1, seed=2, wait=False)
            timer.join()
            assert job.kind == "generate"
            api.wait(job.job_id, timeout=120)
        finally:
            for j in api.jobs(status="running") + api.jobs(status="queued"):
                api.cancel(j.job_id)


def test_async_client_same_results_and_retries(live, one_job_server):
    async def main():
        async with AsyncClient(live.base, API_KEY) as api:
            out, scores = await asyncio.gather(
                api.generate(n=4, seed=3, timeout=120),
                api.score([EXAMPLES / "digit-7.png", EXAMPLES / "digit-2.png"]))
            assert isinstance(out, Generated) and len(out.images) == 4
            assert [r.filename for r in scores.results] == ["digit-7.png", "digit-2.png"]
            job = await api.train("mnist5k", preset="tiny", name="clientasync",
                                  overrides=TINY_TRAIN, wait=True, timeout=300)
            assert isinstance(job, Trained) and job.name == "clientasync"
            assert (await api.models())["clientasync"].default_version == 1
            with pytest.raises(DebmError) as e:
                await api.cancel(job.job_id)
            assert e.value.status == 409 and "already succeeded" in e.value.message
            return out

        async with AsyncClient(one_job_server.base, API_KEY, retries=1,
                               max_retry_wait=0.1) as api:
            blocker = await api.generate(n=2, seed=1, steps_latent=2000, steps_pixel=2000,
                                         wait=False)
            try:
                with pytest.raises(DebmError) as e:
                    await api.generate(n=1, wait=False)
                assert e.value.status == 429
            finally:
                await api.cancel(blocker.job_id)
                await api.wait(blocker.job_id, timeout=120)

    out = asyncio.run(main())
    with Client(live.base, API_KEY) as api:  # sync and async give the same images
        sync = api.generate(n=4, seed=3, timeout=120)
    assert [i.tobytes() for i in sync.images] == [i.tobytes() for i in out.images]


class SilentServer:
    """A TCP server that accepts connections and never answers: real timeouts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_timeouts_and_refused_connections():
    silent = SilentServer()
    try:
        base = f"http://127.0.0.1:{silent.port}"
        with Client(base, API_KEY, timeout=0.3, retries=2, max_retry_wait=0.05) as api:
            with pytest.raises(DebmError) as e:
                api.job("0" * 32)  # a GET: retried, then given up
            assert e.value.status is None and "timed out" in e.value.message
            wait_until(lambda: len(silent.accepted) == 3, timeout=5, what="3 connections")
            with pytest.raises(DebmError) as e:
                # A POST with its Idempotency-Key (debm.client sends one on every
                # job-creating call): retried like a GET, since the server would answer a
                # retry with the job the first attempt created.
                api.generate(n=1, wait=False)
            assert e.value.status is None and "may still have been accepted" in e.value.message
            time.sleep(0.3)
            assert len(silent.accepted) == 6
    finally:
        silent.close()
    with Client(f"http://127.0.0.1:{free_port()}", API_KEY, retries=1,
                max_retry_wait=0.05) as api:
        with pytest.raises(DebmError) as e:
            api.generate(n=1, wait=False)  # nothing listens: safe to retry, then an error
    assert e.value.status is None and "failed" in e.value.message
