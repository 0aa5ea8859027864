"""The scoring fast path of embedded mode (issue 24): a small ``/ood-score`` without ``?wait``
is scored inline through the batcher, with no upload written and no job record, and its
scores are those of the job path; a larger request, or one that asks to wait, gets a job."""

from __future__ import annotations

import pytest

from core.settings import Settings
from service.dispatch import Dispatcher
from tests.e2e.conftest import start_serve
from tests.support import API_KEY
from tests.support.images import digit_png
from tests.system.conftest import procs, redis_prefix, wait_ready  # noqa: F401 (fixtures)

pytestmark = pytest.mark.system

H = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("fast-path")
    live = start_serve(root / "data", root, seed_checkpoint=tiny_checkpoint,
                       DEBM_MAX_BATCH_SIZE="2")
    yield live
    live.proc.kill()


def _files(*seeds: int) -> list:
    return [("files", (f"d{seed}.png", digit_png(seed=seed), "image/png")) for seed in seeds]


def test_inline_scores_equal_the_job_path_and_leave_nothing_behind(server):
    with server.client() as client:
        for seeds in ((1,), (2, 3)):  # at most DEBM_MAX_BATCH_SIZE=2 images: inline
            inline = client.post("/ood-score", files=_files(*seeds))
            assert inline.status_code == 200, inline.text
            job = client.post("/ood-score", params={"wait": 60}, files=_files(*seeds))
            assert job.status_code == 200, job.text
            got, want = inline.json(), job.json()
            assert [r["filename"] for r in got["results"]] == [f"d{s}.png" for s in seeds]
            # Bit for bit: the same decode, the same scoring draws (worker.batching).
            assert got["results"] == want["results"]
            assert (got["model"], got["calibrated"], got["score"]) == \
                (want["model"], want["calibrated"], want["score"])
            # The job path keeps a record; the inline answer names none.
            assert client.get(f"/jobs/{want['job_id']}").status_code == 200
            assert client.get(f"/jobs/{got['job_id']}").status_code == 404
        assert not [p for p in (server.data_dir).rglob("*.img")], "an upload was left"
        metrics = client.get("/metrics").text
        assert 'route="/ood-score"' in metrics and "debm_batch_images_count" in metrics


def test_a_request_larger_than_one_batch_takes_the_job_path(server):
    with server.client() as client:
        response = client.post("/ood-score", files=_files(4, 5, 6))
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["results"]) == 3
        job = client.get(f"/jobs/{body['job_id']}").json()
        assert job["status"] == "succeeded" and job["kind"] == "score"


def test_a_broken_image_is_refused_before_any_scoring(server):
    with server.client() as client:
        response = client.post("/ood-score", files={"files": ("x.png", digit_png()[:70])})
        assert response.status_code == 422 and "x.png" in response.text


def test_the_inline_path_holds_at_most_one_batch_per_key():
    dispatcher = Dispatcher(Settings(max_batch_size=4), store=None, celery_app=None,
                            data=None)
    assert dispatcher.reserve_inline("a", 3)
    assert not dispatcher.reserve_inline("a", 2)  # 5 > 4: this one takes the job path
    assert dispatcher.reserve_inline("b", 4)  # another key has its own batch
    dispatcher.release_inline("a", 3)
    assert dispatcher.reserve_inline("a", 4)
    dispatcher.release_inline("a", 4)
    assert dispatcher._inline == {"b": 4}
