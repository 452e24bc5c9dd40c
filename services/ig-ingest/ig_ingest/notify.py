"""Failure notices: an IngestFailure event on the bus (INGEST_FAILED, in STREAM_EVENTS) for every
job with failed packages, and, when FHIRSCHEMA_IG_WEBHOOK_URL is set, the same JSON POSTed there,
retried with backoff (tenacity) on transport errors, 5xx and 429; a 4xx other than 429 is not
retried (the receiver refuses it). The POST runs in the background: a slow receiver never holds
an ingest job (or its message's acknowledgement) up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from fhirschema_bus import metrics
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import HEADER_MSG_ID, IngestFailure, IngestJob, PackageState

log = logging.getLogger("ig_ingest.notify")
Publish = Callable[[str, bytes, dict[str, str]], Awaitable[object]]


class _Retryable(Exception):
    pass


def _retryable(e: BaseException) -> bool:
    return isinstance(e, (_Retryable, httpx.TransportError))


class Notifier:
    def __init__(
        self, publish: Publish, webhook_url: str = "", token: str | None = None, attempts: int = 5,
        client: httpx.AsyncClient | None = None, backoff: float = 0.5,
    ) -> None:  # fmt: skip
        self.publish, self.url, self.token = publish, webhook_url.strip(), token
        self.attempts, self.backoff = max(1, attempts), backoff
        self.client = client or httpx.AsyncClient(timeout=10.0)
        self.tasks: set[asyncio.Task[bool]] = set()

    async def job_finished(self, job: IngestJob, scheduled: bool) -> IngestFailure | None:
        failed = [p for p in job.packages if p.state is PackageState.FAILED]
        if not failed:
            return None
        event = IngestFailure(job=job.job, failed=failed, scheduled=scheduled)
        body = event.model_dump_json().encode()
        # One event per job, whichever replica finishes it (a redelivery publishes the same id).
        await self.publish(s.INGEST_FAILED, body, {HEADER_MSG_ID: f"ingest-failed-{job.job}"})
        metrics.INGEST_NOTICES.labels("bus", "sent").inc()
        if self.url:
            task = asyncio.create_task(self.post(body))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return event

    async def post(self, body: bytes) -> bool:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts), wait=wait_exponential(multiplier=self.backoff, max=30),
                retry=retry_if_exception(_retryable), reraise=True,
            ):  # fmt: skip
                with attempt:
                    r = await self.client.post(self.url, content=body, headers=headers)
                    if r.status_code >= 500 or r.status_code == 429:
                        raise _Retryable(f"HTTP {r.status_code}")
                    r.raise_for_status()
        except Exception as e:
            metrics.INGEST_NOTICES.labels("webhook", "failed").inc()
            log.warning("webhook %s: the failure notice was not delivered: %s", self.url, e)
            return False
        metrics.INGEST_NOTICES.labels("webhook", "sent").inc()
        return True

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()
