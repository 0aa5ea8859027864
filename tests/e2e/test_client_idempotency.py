"""debm.client's Idempotency-Key against a live `debm serve`: a POST whose answer is lost
after the server accepted it is retried with the same key and yields the one job; the quota
headers of job-creating answers are exposed as ``Client.quota`` / ``AsyncClient.quota``."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from debm.client import AsyncClient, Client
from tests.support import API_KEY, wait_until
from tests.support.images import digit_png

pytestmark = pytest.mark.system


class LoseFirstAnswer(httpx.HTTPTransport):
    """A real HTTP transport that, once per path, sends the request to the server and then
    reports a read timeout instead of its answer: the server accepted, the client never
    heard."""

    def __init__(self, paths: set[str]):
        super().__init__()
        self.paths, self.keys = set(paths), []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST":
            self.keys.append(request.headers.get("Idempotency-Key"))
        if request.url.path in self.paths:
            self.paths.discard(request.url.path)
            response.read()
            response.close()
            raise httpx.ReadTimeout("answer lost (test)", request=request)
        return response


def jobs_with_seed(api: Client, seed: int) -> list[str]:
    return [j.job_id for j in api.jobs(limit=200) if j.params.get("seed") == seed]


def test_lost_answers_are_retried_with_the_same_key_and_create_one_job(live):
    transport = LoseFirstAnswer({"/generate", "/ood-score"})
    with Client(live.base, API_KEY, transport=transport, retries=2) as api:
        job = api.generate(n=1, seed=4101, wait=False)
        assert jobs_with_seed(api, 4101) == [job.job_id]
        first_key, retry_key = transport.keys[:2]
        assert first_key and first_key == retry_key and len(first_key) >= 32
        assert api.quota["jobs"]["limit"] >= api.quota["jobs"]["remaining"] >= 0
        assert set(api.quota) == {"jobs", "work"}

        scores = api.score([("digit.png", digit_png(3))])
        assert len(scores.results) == 1
        assert transport.keys[2] == transport.keys[3]
        # A new call is a new request: a new key, a new job.
        again = api.generate(n=1, seed=4101, wait=False)
        assert again.job_id != job.job_id and transport.keys[4] not in transport.keys[:4]
        # The caller's own key makes its calls the same request.
        mine = api.generate(n=1, seed=4102, wait=False, idempotency_key="order-4102")
        assert api.generate(n=1, seed=4102, wait=False,
                            idempotency_key="order-4102").job_id == mine.job_id


def test_async_client_sends_a_key_and_reads_the_quota(live):
    async def run():
        async with AsyncClient(live.base, API_KEY) as api:
            first = await api.generate(n=1, seed=4201, wait=False, idempotency_key="a-4201")
            second = await api.generate(n=1, seed=4201, wait=False, idempotency_key="a-4201")
            return first, second, api.quota

    first, second, quota = asyncio.run(run())
    assert first.job_id == second.job_id and quota["jobs"]["limit"] > 0


def test_a_queued_job_has_its_queue_block(live):
    slow = {"n": 1, "steps_latent": 2000, "steps_pixel": 1500}  # within the work quota
    with Client(live.base, API_KEY) as api:
        first = api.generate(seed=4301, wait=False, **slow)
        second = api.generate(seed=4302, wait=False, **slow)
        try:
            def queued_view():
                job = api.job(second.job_id)
                return job if job.status == "queued" and job.queue else None
            job = wait_until(queued_view, timeout=10, what="the second job queued")
            assert job.queue["queue"] == "inference" and job.queue["position"] >= 1
            assert "estimate" in job.queue["estimate"]
            first_view = api.job(first.job_id)  # one read: it may start running meanwhile
            assert first_view.queue is None or first_view.status == "queued"
        finally:
            api.cancel(second.job_id)
            api.cancel(first.job_id)
