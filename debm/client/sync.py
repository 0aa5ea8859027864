"""``Client``: the blocking client (httpx.Client underneath)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import httpx

from . import flows
from .sse import ResumableStream
from .transport import (RetryPolicy, error_from, quota, request_timeout, retry_after,
                        should_retry_status, transport_error)
from .types import Event

DEFAULT_TIMEOUT = 30.0


class Client:
    """A client of the Denoising-EBM service.

    >>> with Client("http://127.0.0.1:8000", api_key) as api:
    ...     out = api.generate(n=16, seed=1)          # waits; out.images are PIL images
    ...     out.grid.save("grid.png")
    ...     api.score(["digit.png", "photo.jpg"]).results[0].is_ood

    ``timeout``: seconds for connecting and for each read (long polls add their wait);
    ``retries`` / ``max_retry_wait``: how 429 / 503 answers and failed connections are
    retried (see debm.client.transport)."""

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = 3,
                 max_retry_wait: float = 30.0, transport: httpx.BaseTransport | None = None):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout = httpx.Timeout(timeout)
        self.policy = RetryPolicy(retries=retries, max_retry_wait=max_retry_wait)
        # The key's quotas as the last job-creating answer told them (RateLimit headers):
        # {"jobs": {"limit": 8, "remaining": 5}, "work": {...}}.
        self.quota: dict[str, dict[str, int]] = {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                 timeout=self.timeout, transport=transport)

    # -- plumbing ----------------------------------------------------------------------------
    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, call: flows.Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self.http.request(call.method, call.path, params=call.params,
                                             json=call.json, files=call.files,
                                             headers=call.headers,
                                             timeout=request_timeout(self.timeout, call))
            except httpx.HTTPError as exc:
                error = transport_error(exc, call, attempt, self.policy,
                                        self.timeout.read or 0.0)
                if error is not None:
                    raise error from exc
                time.sleep(self.policy.delay(attempt, None))
                attempt += 1
                continue
            if response.status_code in call.expect:
                if call.idempotency_key:
                    self.quota = quota(response) or self.quota
                return response
            if should_retry_status(response, attempt, self.policy, call):
                time.sleep(self.policy.delay(attempt, retry_after(response)))
                attempt += 1
                continue
            raise error_from(response)

    def _run(self, flow: flows.Flow) -> Any:
        try:
            step = next(flow)
            while True:
                if isinstance(step, flows.Sleep):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(self._send(step))
        except StopIteration as stop:
            return stop.value

    # -- the API -----------------------------------------------------------------------------
    def generate(self, n: int = 16, *, seed: int = 0, sampler: str = "two_stage",
                 steps_latent: int | None = None, steps_pixel: int | None = None,
                 step_size_latent: float | None = None, step_size_pixel: float | None = None,
                 model: str | None = None, wait: bool = True, timeout: float | None = None,
                 idempotency_key: str | None = None, callback_url: str | None = None):
        """Generated (PIL images + grid) once done; with ``wait=False`` the queued Job."""
        return self._run(flows.generate(
            wait_for=wait, timeout=timeout, n=n, seed=seed, sampler=sampler,
            steps_latent=steps_latent, steps_pixel=steps_pixel,
            step_size_latent=step_size_latent, step_size_pixel=step_size_pixel, model=model,
            idempotency_key=idempotency_key, callback_url=callback_url))

    def score(self, images: Iterable[flows.ImageInput], *, model: str | None = None,
              timeout: float | None = None,
              idempotency_key: str | None = None, callback_url: str | None = None):
        """Scores of image files (paths), PNG/JPEG bytes, PIL images or (name, bytes)."""
        return self._run(flows.score(images, model=model, timeout=timeout,
                                     idempotency_key=idempotency_key,
                                     callback_url=callback_url))

    def train(self, dataset: str, *, preset: str = "demo",
              overrides: dict[str, dict[str, Any]] | None = None, seed: int | None = None,
              name: str = "custom", wait: bool = False, timeout: float | None = None,
              idempotency_key: str | None = None, callback_url: str | None = None):
        """The queued Job (admin keys); with ``wait=True`` the Trained result."""
        return self._run(flows.train(idempotency_key=idempotency_key, callback_url=callback_url,
                                     wait_for=wait, timeout=timeout, dataset=dataset,
                                     preset=preset, overrides=overrides or {}, seed=seed,
                                     name=name))

    def upload_dataset(self, file: str | Path | bytes | tuple, *,
                       idempotency_key: str | None = None):
        return self._run(flows.upload_dataset(file, idempotency_key))

    def jobs(self, *, status: str | None = None, kind: str | None = None, limit: int = 50,
             all: bool = False):
        return self._run(flows.jobs(status=status, kind=kind, limit=limit,
                                    all="true" if all else None))

    def job(self, job_id: str):
        return self._run(flows.job(job_id))

    def wait(self, job_id: str, timeout: float | None = None):
        """The job once final (succeeded, failed or cancelled); DebmError after timeout."""
        return self._run(flows.wait(job_id, timeout))

    def result(self, job_id: str):
        return self._run(flows.result(job_id))

    def cancel(self, job_id: str):
        return self._run(flows.cancel(job_id))

    def models(self):
        return self._run(flows.models())

    def add_model_version(self, name: str, checkpoint: str | Path | bytes, *,
                          make_default: bool = False):
        """Register an exported checkpoint folder (or .tar/.zip bytes or path) as the next
        version of ``name``; the ModelVersion (admin key)."""
        return self._run(flows.add_model_version(name, checkpoint, make_default=make_default))

    def webhook_secret(self, key_id: str) -> str:
        """Issue or rotate an API key's own webhook secret (admin keys): the whsec_ value."""
        return self._run(flows.webhook_secret(key_id))

    def set_default(self, name: str, version: int):
        return self._run(flows.set_default(name, version))

    def calibration(self, name: str | None = None, version: int | None = None) -> dict:
        return self._run(flows.calibration(name, version))

    def events(self, job_id: str, *, last_event_id: str | None = None,
               reconnect: int = 5) -> Iterator[Event]:
        """The job's progress events (``GET /jobs/{id}/events``) until its ``end`` event;
        a dropped connection is resumed with Last-Event-ID (``reconnect`` times)."""
        flows.checked_job_id(job_id)
        stream = ResumableStream(job_id, last_event_id, reconnect)
        while True:
            lost: Exception | None = None
            try:
                with self.http.stream("GET", stream.path, headers=stream.headers(),
                                      timeout=httpx.Timeout(self.timeout.connect,
                                                            read=None)) as response:
                    if response.status_code != 200:
                        response.read()
                        raise error_from(response)
                    for line in response.iter_lines():
                        event = stream.feed(line)
                        if event is not None:
                            yield event
                            if event.event == "end":
                                return
            except httpx.TransportError as exc:
                lost = exc
            time.sleep(stream.connection_ended(lost))
