"""The S3 adapter: one `ObjectStore` over `minio.Minio`, with retries and clear errors.

The core is synchronous (usable from worker threads); every method has an `a`-prefixed async
twin that runs it in a thread (`await store.aget_json(...)`). Transient failures (connection
refused/reset, timeouts, 5xx, throttling) are retried with exponential backoff; when the store
stays unreachable the caller gets `ObjectStoreUnavailable` naming the endpoint, the operation and
the last error. A missing object is `ObjectNotFound` (never retried).

No connection is made at construction time, and minio (with urllib3 and pycryptodome) is
imported only when the store is first used: a validator replica that starts from its package
cache never needs S3, and the import was ~15% of its start.
"""

from __future__ import annotations

import asyncio
import builtins
import io
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from fhirschema_bus.contracts import ObjectRef
from fhirschema_bus.settings import S3Settings

if TYPE_CHECKING:
    from minio import Minio

T = TypeVar("T")

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"}
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling"}


class ObjectStoreError(RuntimeError):
    """Any failure of the object store that is not a missing object."""


class ObjectNotFound(ObjectStoreError, KeyError):
    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"object not found: s3://{bucket}/{key}")
        self.bucket, self.key = bucket, key

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ObjectStoreUnavailable(ObjectStoreError):
    """The store did not answer (or answered 5xx) for every attempt."""


def is_transient(exc: BaseException) -> bool:
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError | ServerError):
        return True
    if isinstance(exc, InvalidResponseError):
        return True  # a proxy/gateway page instead of S3 XML: usually a 502/503
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES
    return False


class ObjectStoreProtocol(Protocol):
    """What services need from S3 (tests may pass an in-memory fake)."""

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = ...) -> ObjectRef: ...
    def get_bytes(self, bucket: str, key: str) -> bytes: ...
    def put_json(self, bucket: str, key: str, obj: Any) -> ObjectRef: ...
    def get_json(self, bucket: str, key: str) -> Any: ...
    def exists(self, bucket: str, key: str) -> bool: ...
    def delete(self, bucket: str, key: str) -> None: ...
    def list(self, bucket: str, prefix: str = "") -> list[str]: ...


class AsyncObjectStore(Protocol):
    """What the storage service needs from S3, asynchronously (ObjectStore; tests: a fake)."""

    async def aensure_buckets(self, buckets: Iterable[str] | None = None) -> None: ...
    async def aput_bytes(self, bucket: str, key: str, data: bytes, content_type: str = ...) -> ObjectRef: ...
    async def aget_bytes(self, bucket: str, key: str) -> bytes: ...
    async def aput_json(self, bucket: str, key: str, obj: Any) -> ObjectRef: ...
    async def aget_json(self, bucket: str, key: str) -> Any: ...
    async def adelete(self, bucket: str, key: str) -> None: ...
    async def alist(self, bucket: str, prefix: str = "") -> list[str]: ...


class ObjectStore:
    def __init__(
        self,
        settings: S3Settings,
        *,
        attempts: int = 4,
        wait_min: float = 0.2,
        wait_max: float = 2.0,
        timeout: float = 5.0,
        client: Minio | None = None,
    ) -> None:
        self.settings = settings
        self.endpoint = settings.endpoint
        self.attempts = max(1, attempts)
        self._wait = wait_exponential(multiplier=wait_min, min=wait_min, max=wait_max)
        self._client = client
        self._timeout = timeout

    # --- plumbing --------------------------------------------------------------------------

    @property
    def client(self) -> Minio:
        if self._client is None:
            import urllib3
            from minio import Minio

            # Our own pool: short timeouts, and no urllib3-level retries (tenacity does those,
            # so the total wait while S3 is down stays bounded and predictable).
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=self._timeout, read=max(self._timeout, 30.0)),
                retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False),
                maxsize=32,
            )
            self._client = Minio(
                self.settings.endpoint,
                access_key=self.settings.access_key.get_secret_value(),
                secret_key=self.settings.secret_key.get_secret_value(),
                secure=self.settings.secure,
                region=self.settings.region,
                http_client=http,
            )
        return self._client

    @property
    def buckets(self) -> list[str]:
        s = self.settings
        return [s.bucket_schemas, s.bucket_packages, s.bucket_results, s.bucket_payloads]

    def _call(self, op: str, where: str, fn: Callable[[], T]) -> T:
        from minio.error import S3Error

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception(is_transient),
            reraise=False,
        )
        try:
            return retrying(fn)
        except RetryError as e:
            last = e.last_attempt.exception()
            raise ObjectStoreUnavailable(
                f"S3 at {self.endpoint} unavailable: {op} {where} failed after {self.attempts} "
                f"attempts: {type(last).__name__}: {_short(last)}"
            ) from last
        except S3Error as e:
            if e.code in _NOT_FOUND:
                bucket, _, key = where.partition("/")
                raise ObjectNotFound(bucket, key) from e
            raise ObjectStoreError(f"S3 {op} {where}: {e.code}: {e.message}") from e
        except (ValueError, TypeError):
            raise
        except ObjectStoreError:
            raise
        except Exception as e:
            raise ObjectStoreError(f"S3 {op} {where}: {type(e).__name__}: {_short(e)}") from e

    # --- sync API --------------------------------------------------------------------------

    def ping(self) -> bool:
        """One quick attempt, no retries: is the store answering?"""
        try:
            self.client.list_buckets()
            return True
        except Exception:
            return False

    def ensure_buckets(self, buckets: Iterable[str] | None = None) -> None:
        from minio.error import S3Error

        for bucket in buckets or self.buckets:

            def make(b: str = bucket) -> None:
                if not self.client.bucket_exists(b):
                    try:
                        self.client.make_bucket(b)
                    except S3Error as e:  # another replica created it meanwhile
                        if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise

            self._call("ensure bucket", bucket, make)

    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        def put() -> None:
            self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

        self._call("put", f"{bucket}/{key}", put)
        return ObjectRef(bucket=bucket, key=key)

    def put_stream(
        self, bucket: str, key: str, chunks: Iterable[bytes], content_type: str = "application/x-ndjson"
    ) -> ObjectRef:
        """Upload an iterable of byte chunks (e.g. NDJSON lines). Buffered once, so a retry
        resends the same bytes; large NDJSON result sets fit easily in memory as bytes."""
        return self.put_bytes(bucket, key, b"".join(chunks), content_type)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        def get() -> bytes:
            resp = self.client.get_object(bucket, key)
            try:
                return bytes(resp.read())
            finally:
                resp.close()
                resp.release_conn()

        return self._call("get", f"{bucket}/{key}", get)

    def put_json(self, bucket: str, key: str, obj: Any) -> ObjectRef:
        return self.put_bytes(bucket, key, orjson.dumps(obj), "application/json")

    def get_json(self, bucket: str, key: str) -> Any:
        return orjson.loads(self.get_bytes(bucket, key))

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self._call("stat", f"{bucket}/{key}", lambda: self.client.stat_object(bucket, key))
            return True
        except ObjectNotFound:
            return False

    def delete(self, bucket: str, key: str) -> None:
        """Idempotent: deleting a missing object is not an error."""
        self._call("delete", f"{bucket}/{key}", lambda: self.client.remove_object(bucket, key))

    def list(self, bucket: str, prefix: str = "", recursive: bool = True) -> list[str]:
        def ls() -> builtins.list[str]:
            objs = self.client.list_objects(bucket, prefix=prefix or None, recursive=recursive)
            return [o.object_name for o in objs if o.object_name is not None]

        return self._call("list", f"{bucket}/{prefix}", ls)

    def iter_lines(self, bucket: str, key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """Stream an NDJSON object line by line (without the newline; blank lines skipped).
        Opening is retried; a failure mid-stream raises ObjectStoreError."""
        import urllib3

        resp = self._call("get", f"{bucket}/{key}", lambda: self.client.get_object(bucket, key))
        buf = b""
        try:
            for chunk in resp.stream(chunk_size):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                yield from (ln for ln in lines if ln.strip())
            if buf.strip():
                yield buf
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ObjectStoreError(f"S3 stream {bucket}/{key} broke: {_short(e)}") from e
        finally:
            resp.close()
            resp.release_conn()

    def get(self, ref: ObjectRef) -> bytes:
        return self.get_bytes(ref.bucket, ref.key)

    # --- async twins (run the sync core in a worker thread) --------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.to_thread(partial(fn, *args, **kw))

    async def aping(self) -> bool:
        return await self._run(self.ping)

    async def aensure_buckets(self, buckets: Iterable[str] | None = None) -> None:
        await self._run(self.ensure_buckets, buckets)

    async def aput_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        return await self._run(self.put_bytes, bucket, key, data, content_type)

    async def aget_bytes(self, bucket: str, key: str) -> bytes:
        return await self._run(self.get_bytes, bucket, key)

    async def aput_json(self, bucket: str, key: str, obj: Any) -> ObjectRef:
        return await self._run(self.put_json, bucket, key, obj)

    async def aget_json(self, bucket: str, key: str) -> Any:
        return await self._run(self.get_json, bucket, key)

    async def aexists(self, bucket: str, key: str) -> bool:
        return await self._run(self.exists, bucket, key)

    async def adelete(self, bucket: str, key: str) -> None:
        await self._run(self.delete, bucket, key)

    async def alist(self, bucket: str, prefix: str = "") -> builtins.list[str]:
        return await self._run(self.list, bucket, prefix)

    async def aget(self, ref: ObjectRef) -> bytes:
        return await self._run(self.get, ref)

    async def aput_stream(
        self, bucket: str, key: str, chunks: Iterable[bytes], content_type: str = "application/x-ndjson"
    ) -> ObjectRef:
        return await self._run(self.put_stream, bucket, key, chunks, content_type)


def _short(exc: BaseException | None, limit: int = 300) -> str:
    text = str(exc) if exc is not None else "?"
    return text if len(text) <= limit else text[:limit] + "…"
