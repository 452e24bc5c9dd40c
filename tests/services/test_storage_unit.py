"""Storage's service layer without servers: in-memory S3, index and state; requests go through
the same StorageClient and StorageReply envelope as over NATS."""

from __future__ import annotations

from typing import Any

import pytest
from storage_service import keys
from storage_service.handlers import StorageHandlers
from storage_service.index import SchemaIndex
from storage_service.repository import BadRequest, SchemaRepository
from storage_service.state import MemoryState

from fhirschema.converter import convert
from fhirschema.package import load_tgz
from fhirschema_bus import subjects as s
from fhirschema_bus.contracts import (
    IndexPackage,
    PutSchema,
    PutSchemas,
    RemovePackage,
    SchemaList,
    SchemaQuery,
)
from fhirschema_bus.settings import S3Settings
from fhirschema_bus.storage import StorageClient, StorageFailed, decode
from tests.conftest import PACKAGES
from tests.services.fakes import MemoryObjects

S3 = S3Settings(access_key="unused", secret_key="unused")
R4 = PACKAGES / "hl7.fhir.r4.core#4.0.1.tgz"


class InProcess:
    """Storage's handlers behind the StorageClient's Request signature."""

    def __init__(self) -> None:
        self.objects = MemoryObjects()
        self.state = MemoryState()
        self.repo = SchemaRepository(self.objects, SchemaIndex(None), self.state, S3)
        h = StorageHandlers(self.repo)
        self.routes = {
            s.STORAGE_GET_SCHEMA: h.get_schema, s.STORAGE_LIST: h.list, s.STORAGE_DELETE: h.delete,
            s.STORAGE_UPSERT: h.upsert, s.STORAGE_INDEX_PACKAGE: h.index_package,
            s.STORAGE_REMOVE_PACKAGE: h.remove_package,
        }  # fmt: skip
        self.client = StorageClient(self.request)

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        return await self.routes[subject](payload)


@pytest.fixture
def storage() -> InProcess:
    return InProcess()


def schema(url: str, version: str | None = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"url": url, "version": version, "type": "Patient", "kind": "resource", "elements": {}, **extra}


def test_ids_are_deterministic_distinct_and_need_no_url_encoding() -> None:
    url = "http://hl7.org/fhir/StructureDefinition/Patient"
    rid = keys.schema_id(url, "4.0.1", "hl7.fhir.r4.core#4.0.1")
    assert rid == keys.schema_id(url, "4.0.1", "hl7.fhir.r4.core#4.0.1")
    assert rid.startswith("Patient-") and len(rid) == len("Patient-") + 16
    others = {
        keys.schema_id(url, "4.0.0", "hl7.fhir.r4.core#4.0.1"),
        keys.schema_id(url, "4.0.1", "hl7.fhir.r4.core#4.0.0"),
        keys.schema_id(url, "4.0.1", None),
        keys.schema_id(url + "x", "4.0.1", "hl7.fhir.r4.core#4.0.1"),
    }
    assert rid not in others and len(others) == 4
    weird = keys.schema_id("urn:uuid:1234|x?y#z", None, "a b#1")
    assert all(c.isalnum() or c in "._-" for c in weird)


async def test_every_r4_core_schema_has_its_own_id(storage: InProcess) -> None:
    pkg = load_tgz(R4)
    sds = [pkg.read(e) for e in pkg.entries if e.resourceType == "StructureDefinition"]
    assert len(sds) == 658
    assert len({sd["name"] for sd in sds}) < 658  # names collide (the old ids came from them)
    for sd in sds:
        await storage.repo.upsert(
            PutSchema(schema_=convert(sd, package=pkg), package=pkg.id, origin="package")
        )
    listed = await storage.client.list(SchemaQuery(package=pkg.id, limit=1000))
    assert listed.total == 658 and len({r.id for r in listed.items}) == 658
    for record in listed.items:
        doc = await storage.client.get_schema(SchemaQuery(id=record.id))
        assert (doc.schema_["url"], doc.record.id) == (record.url, record.id)
    fmh = await storage.client.get_schema(
        SchemaQuery(url="http://hl7.org/fhir/StructureDefinition/FamilyMemberHistory")
    )
    assert fmh.schema_["type"] == "FamilyMemberHistory"


async def test_chunks_store_what_single_puts_store(storage: InProcess) -> None:
    """R4 core as the durable chunks ig-ingest sends: the same records as one put at a time."""
    pkg = load_tgz(R4)
    sds = [pkg.read(e) for e in pkg.entries if e.resourceType == "StructureDefinition"][:150]
    puts = [PutSchema(schema_=convert(sd, package=pkg), package=pkg.id, origin="package") for sd in sds]
    for start in range(0, len(puts), 64):
        await storage.repo.upsert_many(PutSchemas(puts=puts[start : start + 64]))
    single = InProcess()
    for put in puts:
        await single.repo.upsert(put.model_copy(update={"replace": True}))
    for q in (
        SchemaQuery(package=pkg.id, limit=1000),
        SchemaQuery(package=pkg.id, origin="package", limit=1000),
    ):
        chunked, one = (await storage.repo.list(q)), (await single.repo.list(q))
        assert chunked[1] == one[1] == 150
        assert [(r.id, r.url, r.object) for r in chunked[0]] == [(r.id, r.url, r.object) for r in one[0]]
    assert storage.repo.index.urls == single.repo.index.urls

    def objects(st: InProcess, prefix: str = "") -> set[str]:
        return {k for _, k in st.objects.objects if k.startswith(prefix)}

    # The same schema objects; their records in one object per chunk (3), not one each (150).
    assert objects(storage) - objects(storage, "_index/") == objects(single) - objects(single, "_index/")
    assert len(objects(storage, keys.INDEX_CHUNKS)) == 3 and not objects(storage, keys.INDEX_RECORDS)
    assert len(objects(single, keys.INDEX_RECORDS)) == 150
    # Again (a redelivery): the same objects. A put without url is refused, the others stored.
    before = objects(storage)
    await storage.repo.upsert_many(PutSchemas(puts=puts[:64]))
    assert objects(storage) == before
    extra = PutSchema(schema_=schema("http://example.org/x"), package=pkg.id, origin="package")
    with pytest.raises(BadRequest, match="1 of 2 schemas not stored"):
        await storage.repo.upsert_many(PutSchemas(puts=[PutSchema(schema_={"name": "x"}), extra]))
    assert (await storage.repo.list(SchemaQuery(package=pkg.id, limit=1)))[1] == 151


async def test_the_index_rebuilt_from_chunks_and_records(storage: InProcess) -> None:
    """S3's copy of the index (chunks and single records) gives back the index: a record replaced
    by a single put is its newest copy; a deleted one leaves every copy; a removed package its chunks."""
    pkg = "ex.chunks#1.0.0"
    puts = [
        PutSchema(schema_=schema(f"http://example.org/c{i}"), package=pkg, origin="package")
        for i in range(10)
    ]
    await storage.repo.upsert_many(PutSchemas(puts=puts[:6]))
    await storage.repo.upsert_many(PutSchemas(puts=puts[6:]))
    replaced = await storage.repo.upsert(
        PutSchema(
            schema_=schema("http://example.org/c3", elements={"x": {}}),
            package=pkg,
            origin="package",
            replace=True,
        )
    )
    upload = await storage.repo.upsert(PutSchema(schema_=schema("http://example.org/u")))
    gone = storage.repo.index.urls["http://example.org/c7"]
    assert await storage.repo.delete(gone)
    rebuilt = {r.id: r for r in await storage.repo.records_in_s3()}
    assert set(rebuilt) == set(storage.repo.index.records) and len(rebuilt) == 10  # 9 + the upload
    assert rebuilt[replaced.id].updated == replaced.updated and gone not in rebuilt
    assert rebuilt[upload.id].origin == "upload"
    await storage.repo.remove_package(RemovePackage(package=pkg))
    assert [r.id for r in await storage.repo.records_in_s3()] == [upload.id]
    assert not {k for _, k in storage.objects.objects if k.startswith(keys.INDEX_CHUNKS)}


async def test_post_conflicts_put_replaces(storage: InProcess) -> None:
    url = "http://example.org/StructureDefinition/p"
    rec = await storage.client.upsert(PutSchema(schema_=schema(url)))
    state = await storage.state.read()
    with pytest.raises(StorageFailed) as conflict:
        await storage.client.upsert(PutSchema(schema_=schema(url, elements={"x": {}})))
    assert conflict.value.status == 409 and f"PUT /schemas/{rec.id}" in conflict.value.message
    assert (await storage.state.read()).uploads == state.uploads  # nothing changed
    replaced = await storage.client.upsert(PutSchema(schema_=schema(url, elements={"x": {}}), replace=True))
    assert replaced.id == rec.id
    put = await storage.client.upsert(PutSchema(schema_=schema(url, elements={"y": {}}), id=rec.id))
    assert put.id == rec.id
    assert (await storage.client.get_schema(SchemaQuery(id=rec.id))).schema_["elements"] == {"y": {}}
    assert (await storage.state.read()).uploads == state.uploads + 2
    with pytest.raises(StorageFailed) as moved:  # a PUT keeps the identity of the record it names
        await storage.client.upsert(PutSchema(schema_=schema(url, "2.0.0"), id=rec.id))
    assert moved.value.status == 409 and "keeps url, version and package" in moved.value.message
    with pytest.raises(StorageFailed) as missing:
        await storage.client.upsert(PutSchema(schema_=schema(url), id="nope-0000000000000000"))
    assert missing.value.status == 404
    other = await storage.client.upsert(PutSchema(schema_=schema(url, "2.0.0")))  # another version: new
    assert other.id != rec.id
    assert (await storage.client.get_schema(SchemaQuery(url=url))).record.id == other.id  # the newest
    assert (await storage.client.delete(rec.id)).deleted
    assert not (await storage.client.delete(rec.id)).deleted


async def test_faults_are_typed(storage: InProcess) -> None:
    with pytest.raises(StorageFailed) as bad:
        await storage.client.upsert(PutSchema(schema_={"name": "no url"}))
    assert bad.value.status == 400 and "url" in bad.value.message
    with pytest.raises(StorageFailed) as none:
        await storage.client.get_schema(SchemaQuery(url="http://nope"))
    assert none.value.status == 404
    with pytest.raises(StorageFailed) as garbage:  # what a program publishing to NATS may send
        decode(await storage.request(s.STORAGE_LIST, b"{not json", 1.0), SchemaList)
    assert garbage.value.status == 400 and "SchemaQuery" in garbage.value.message


async def test_registering_a_package_puts_it_in_the_state(storage: InProcess) -> None:
    data = R4.read_bytes()
    ref = await storage.objects.aput_bytes(S3.bucket_packages, "hl7.fhir.r4.core/x.tgz", data)
    indexed = await storage.client.index_package(IndexPackage(package="hl7.fhir.r4.core#4.0.1", object=ref))
    state = await storage.state.read()
    assert indexed.revision == state.revision == 1 and indexed.package.fhir_versions == ["4.0.1"]
    assert state.package("hl7.fhir.r4.core#4.0.1") == indexed.package
    with pytest.raises(StorageFailed) as wrong:
        await storage.client.index_package(IndexPackage(package="hl7.fhir.us.core#3.1.1", object=ref))
    assert wrong.value.status == 400 and "holds hl7.fhir.r4.core#4.0.1" in wrong.value.message
