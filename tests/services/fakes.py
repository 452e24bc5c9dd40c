"""In-memory fakes for the services' ports: service logic tested without servers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from fhirschema_bus.contracts import ObjectRef
from fhirschema_bus.object_store import ObjectNotFound


class MemoryObjects:
    """An S3 bucket set in a dict (fhirschema_bus.object_store.AsyncObjectStore)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    async def aensure_buckets(self, buckets: Iterable[str] | None = None) -> None:
        return None

    async def aput_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        self.objects[(bucket, key)] = bytes(data)
        return ObjectRef(bucket=bucket, key=key)

    async def aget_bytes(self, bucket: str, key: str) -> bytes:
        try:
            return self.objects[(bucket, key)]
        except KeyError:
            raise ObjectNotFound(bucket, key) from None

    async def aput_json(self, bucket: str, key: str, obj: Any) -> ObjectRef:
        return await self.aput_bytes(bucket, key, orjson.dumps(obj))

    async def aget_json(self, bucket: str, key: str) -> Any:
        return orjson.loads(await self.aget_bytes(bucket, key))

    async def adelete(self, bucket: str, key: str) -> None:
        self.objects.pop((bucket, key), None)

    async def alist(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix))


def profile_requiring(url: str, element: str) -> dict[str, Any]:
    """A FHIRSchema profile of Patient at `url` that makes `element` required: uploaded, then
    replaced by one requiring another element, it shows which version a validator enforces."""
    return {
        "url": url, "type": "Patient", "kind": "resource", "derivation": "constraint",
        "base": "http://hl7.org/fhir/StructureDefinition/Patient", "required": [element], "elements": {},
    }  # fmt: skip
