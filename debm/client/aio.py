"""``AsyncClient``: the asyncio client (httpx.AsyncClient underneath); the same methods as
``Client``, as coroutines, and ``events()`` as an async iterator."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

import httpx

from . import flows
from .sse import ResumableStream
from .sync import DEFAULT_TIMEOUT
from .transport import (RetryPolicy, error_from, quota, request_timeout, retry_after,
                        should_retry_status, transport_error)
from .types import Event


class AsyncClient:
    """``async with AsyncClient(url, key) as api: out = await api.generate(n=4)``."""

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = 3,
                 max_retry_wait: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout = httpx.Timeout(timeout)
        self.policy = RetryPolicy(retries=retries, max_retry_wait=max_retry_wait)
        # The key's quotas as the last job-creating answer told them (RateLimit headers):
        # {"jobs": {"limit": 8, "remaining": 5}, "work": {...}}.
        self.quota: dict[str, dict[str, int]] = {}
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                      timeout=self.timeout, transport=transport)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _send(self, call: flows.Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self.http.request(
                    call.method, call.path, params=call.params, json=call.json,
                    files=call.files, headers=call.headers,
                    timeout=request_timeout(self.timeout, call))
            except httpx.HTTPError as exc:
                error = transport_error(exc, call, attempt, self.policy,
                                        self.timeout.read or 0.0)
                if error is not None:
                    raise error from exc
                await asyncio.sleep(self.policy.delay(attempt, None))
                attempt += 1
                continue
            if response.status_code in call.expect:
                if call.idempotency_key:
                    self.quota = quota(response) or self.quota
                return response
            if should_retry_status(response, attempt, self.policy, call):
                await asyncio.sleep(self.policy.delay(attempt, retry_after(response)))
                attempt += 1
                continue
            raise error_from(response)

    async def _run(self, flow: flows.Flow) -> Any:
        try:
            step = next(flow)
            while True:
                if isinstance(step, flows.Sleep):
                    await asyncio.sleep(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(await self._send(step))
        except StopIteration as stop:
            return stop.value

    async def generate(self, n: int = 16, *, seed: int = 0, sampler: str = "two_stage",
                       steps_latent: int | None = None, steps_pixel: int | None = None,
                       step_size_latent: float | None = None,
                       step_size_pixel: float | None = None, model: str | None = None,
                       wait: bool = True, timeout: float | None = None,
                       idempotency_key: str | None = None,
                       callback_url: str | None = None):
        return await self._run(flows.generate(
            wait_for=wait, timeout=timeout, n=n, seed=seed, sampler=sampler,
            steps_latent=steps_latent, steps_pixel=steps_pixel,
            step_size_latent=step_size_latent, step_size_pixel=step_size_pixel, model=model,
            idempotency_key=idempotency_key, callback_url=callback_url))

    async def score(self, images: Iterable[flows.ImageInput], *, model: str | None = None,
                    timeout: float | None = None, idempotency_key: str | None = None,
                    callback_url: str | None = None):
        return await self._run(flows.score(images, model=model, timeout=timeout,
                                           idempotency_key=idempotency_key,
                                           callback_url=callback_url))

    async def train(self, dataset: str, *, preset: str = "demo",
                    overrides: dict[str, dict[str, Any]] | None = None,
                    seed: int | None = None, name: str = "custom", wait: bool = False,
                    timeout: float | None = None, idempotency_key: str | None = None,
                    callback_url: str | None = None):
        return await self._run(flows.train(idempotency_key=idempotency_key,
                                           callback_url=callback_url,
                                           wait_for=wait, timeout=timeout, dataset=dataset,
                                           preset=preset, overrides=overrides or {},
                                           seed=seed, name=name))

    async def upload_dataset(self, file: str | Path | bytes | tuple, *,
                             idempotency_key: str | None = None):
        return await self._run(flows.upload_dataset(file, idempotency_key))

    async def jobs(self, *, status: str | None = None, kind: str | None = None,
                   limit: int = 50, all: bool = False):
        return await self._run(flows.jobs(status=status, kind=kind, limit=limit,
                                          all="true" if all else None))

    async def job(self, job_id: str):
        return await self._run(flows.job(job_id))

    async def wait(self, job_id: str, timeout: float | None = None):
        return await self._run(flows.wait(job_id, timeout))

    async def result(self, job_id: str):
        return await self._run(flows.result(job_id))

    async def cancel(self, job_id: str):
        return await self._run(flows.cancel(job_id))

    async def models(self):
        return await self._run(flows.models())

    async def add_model_version(self, name: str, checkpoint: str | Path | bytes, *,
                                make_default: bool = False):
        return await self._run(flows.add_model_version(name, checkpoint,
                                                       make_default=make_default))

    async def webhook_secret(self, key_id: str) -> str:
        return await self._run(flows.webhook_secret(key_id))

    async def set_default(self, name: str, version: int):
        return await self._run(flows.set_default(name, version))

    async def calibration(self, name: str | None = None, version: int | None = None) -> dict:
        return await self._run(flows.calibration(name, version))

    async def events(self, job_id: str, *, last_event_id: str | None = None,
                     reconnect: int = 5) -> AsyncIterator[Event]:
        """See Client.events: the same stream, read asynchronously."""
        flows.checked_job_id(job_id)
        stream = ResumableStream(job_id, last_event_id, reconnect)
        while True:
            lost: Exception | None = None
            try:
                async with self.http.stream(
                        "GET", stream.path, headers=stream.headers(),
                        timeout=httpx.Timeout(self.timeout.connect, read=None)) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise error_from(response)
                    async for line in response.aiter_lines():
                        event = stream.feed(line)
                        if event is not None:
                            yield event
                            if event.event == "end":
                                return
            except httpx.TransportError as exc:
                lost = exc
            await asyncio.sleep(stream.connection_ended(lost))
