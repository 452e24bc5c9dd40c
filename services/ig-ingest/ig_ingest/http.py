"""HTTP for the registry client, hardened for the open internet.

- Only configured origins are contacted: every URL (a listing's `dist.tarball`, a redirect, a CI
  build) is checked against the allow-list before a connection is made; redirects are followed
  by hand so that each hop is checked too.
- A bearer token is sent only to the origin of the registry it was configured for.
- Timeouts per read and per whole request; retries with exponential backoff on transport errors,
  5xx and 429, honouring `Retry-After` (seconds or an HTTP date) up to a cap.
- Every body is read as a stream and cut off at a size limit.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

log = logging.getLogger("ig_ingest.http")
USER_AGENT = "fhirschema-ig-ingest/0.2"
MAX_REDIRECTS = 5


class FetchError(RuntimeError):
    """A request failed for good (after its retries): the caller tries its next registry."""


class HostNotAllowed(FetchError):
    """The URL's origin is not one of the configured registries: never contacted."""


class TooLarge(FetchError):
    pass


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL; the unit of the allow-list and of token scoping."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HostNotAllowed(f"{url!r} is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname.lower(), port


@dataclass(frozen=True)
class HttpLimits:
    timeout: float = 30.0  # per connect / read
    total_timeout: float = 300.0  # per attempt, whatever the server dribbles
    attempts: int = 4
    backoff: float = 0.5  # first retry delay; doubles, capped at 8 s
    max_retry_after: float = 30.0  # a longer Retry-After gives up on this registry instead
    max_bytes: int = 256 * 1024 * 1024


@dataclass
class Body:
    url: str  # the final URL, after redirects
    status: int
    content_type: str
    data: bytes
    retry_after: str | None = None


class Http:
    def __init__(
        self,
        allowed: Iterable[str],
        *,
        tokens: Mapping[str, str] | None = None,
        limits: HttpLimits | None = None,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.allowed = {origin(u) for u in allowed}
        self.tokens = {origin(base): token for base, token in (tokens or {}).items() if token}
        self.limits = limits or HttpLimits()
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(self.limits.timeout, connect=min(10.0, self.limits.timeout)),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )
        self.sleep = sleep

    def allows(self, url: str) -> bool:
        try:
            return origin(url) in self.allowed
        except HostNotAllowed:
            return False

    def check(self, url: str) -> None:
        if not self.allows(url):
            raise HostNotAllowed(f"{url} is not on a configured registry host; not contacted")

    async def get(self, url: str, *, accept: str = "*/*", max_bytes: int | None = None) -> Body | None:
        """The body of a 2xx answer; None for 404/410; FetchError once retries are spent."""
        limit = max_bytes or self.limits.max_bytes
        errors: list[str] = []
        for attempt in range(1, self.limits.attempts + 1):
            body: Body | None = None
            try:
                async with asyncio.timeout(self.limits.total_timeout):
                    got = await self._follow(url, accept, limit)
            except (HostNotAllowed, TooLarge):
                raise
            except TimeoutError:
                error = f"no complete answer within {self.limits.total_timeout:.0f}s"
            except httpx.TransportError as e:  # connect/read timeouts, refused, reset
                error = f"{type(e).__name__}: {e or 'timeout'}"
            else:
                body = got
                if got.status in (404, 410):
                    return None
                if 200 <= got.status < 300:
                    return got
                error = f"HTTP {got.status}"
                if got.status < 500 and got.status != 429:
                    raise FetchError(f"GET {url}: {error} {_snippet(got.data)}")
            errors.append(error)
            if attempt == self.limits.attempts:
                break
            delay = self._delay(attempt, body)
            if delay is None:
                errors.append(f"Retry-After longer than {self.limits.max_retry_after:.0f}s")
                break
            log.info("GET %s: %s; retry %d in %.1fs", url, error, attempt, delay)
            await self.sleep(delay)
        raise FetchError(f"GET {url}: {'; '.join(errors)}")

    async def _follow(self, url: str, accept: str, limit: int) -> Body:
        for _ in range(MAX_REDIRECTS + 1):
            self.check(url)
            headers = {"Accept": accept}
            if token := self.tokens.get(origin(url)):
                headers["Authorization"] = f"Bearer {token}"
            async with self.client.stream("GET", url, headers=headers) as r:
                if r.is_redirect and (location := r.headers.get("location")):
                    url = urljoin(url, location)
                    continue
                data = await self._read(r, url, limit)
                ctype, wait = r.headers.get("content-type", ""), r.headers.get("retry-after")
                return Body(str(r.url), r.status_code, ctype, data, wait)
        raise FetchError(f"GET {url}: more than {MAX_REDIRECTS} redirects")

    @staticmethod
    async def _read(r: httpx.Response, url: str, limit: int) -> bytes:
        declared = r.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"GET {url}: {declared} bytes, over the {limit}-byte limit")
        chunks, size = [], 0
        async for chunk in r.aiter_bytes():  # decoded incrementally: capped as it grows
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"GET {url}: over the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def _delay(self, attempt: int, body: Body | None) -> float | None:
        backoff = min(self.limits.backoff * 2 ** (attempt - 1), 8.0)
        if body is None or body.status not in (429, 503):
            return backoff
        wait = retry_after(body.retry_after)
        if wait is None:
            return backoff
        return wait if wait <= self.limits.max_retry_after else None

    async def aclose(self) -> None:
        await self.client.aclose()


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _snippet(data: bytes) -> str:
    text = data[:200].decode("utf-8", "replace").strip()
    return f"({text})" if text else ""
