"""The registry client against the captured real responses and the local registry mimic (no NATS,
S3 or Redis: fast tier). PROTOCOL.md is the reference for every expectation here."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ig_ingest.ci import build_date, newest_build
from ig_ingest.configured import make_registries
from ig_ingest.http import FetchError, HostNotAllowed, Http, HttpLimits, retry_after
from ig_ingest.registries import DirectoryRegistry, HttpRegistry, parse_catalog, parse_listing
from ig_ingest.resolver import NotFound, Registries
from ig_ingest.tarballs import PackageRejected, TarLimits, verify

from fhirschema.ids import PackageId
from fhirschema.package import dependency_list
from fhirschema_bus.settings import IngestSettings
from tests.conftest import PACKAGES, SHARED
from tests.services.registry_server import Registry, make_package, serve_registry

CAPTURED = SHARED / "fhir" / "registry" / "captured"
FAST = HttpLimits(timeout=1.0, total_timeout=5.0, attempts=3, backoff=0.01, max_retry_after=2.0)


def captured(name: str) -> object:
    return json.loads((CAPTURED / name).read_text())


def client(*regs: Registry, limits: HttpLimits = FAST, tokens: dict[str, str] | None = None) -> Registries:
    http = Http([r.base for r in regs], tokens=tokens, limits=limits)
    return Registries([HttpRegistry(r.base, http) for r in regs])


@pytest.fixture
def small(tmp_path: Path) -> Path:
    d = tmp_path / "pkgs"
    d.mkdir()
    shutil.copy(PACKAGES / "hl7.fhir.us.core#3.1.1.tgz", d)
    return d


@pytest.fixture
def two(small: Path) -> Iterator[tuple[Registry, Registry]]:
    with serve_registry(None) as primary, serve_registry(small, "/packages", "secondary") as secondary:
        yield primary, secondary


# --- the captured responses ------------------------------------------------------------------


def test_listings_of_both_public_registries() -> None:
    primary = parse_listing(captured("package-info-r4-core-primary.json"), "p", "hl7.fhir.r4.core")
    secondary = parse_listing(captured("package-info-r4-core-secondary.json"), "s", "hl7.fhir.r4.core")
    assert primary.latest == secondary.latest == "4.0.1"
    assert primary.versions["4.0.1"].shasum == "0e4b8d99f7918587557682c8b47df605424547a5"
    assert secondary.versions["4.0.1"].shasum == "6365eef32ca8852c73298e596b1a7c00021b34cf"  # upper -> lower
    assert secondary.versions["4.0.1"].tarball == "http://packages2.fhir.org/hl7.fhir.r4.core/4.0.1"
    assert secondary.description and primary.versions["4.0.1"].fhir_version == "R4"
    us = parse_listing(captured("package-info-us-core-primary.json"), "p", "hl7.fhir.us.core")
    assert us.latest == "6.1.0" and "6.1.0-snapshot1" in us.versions and "0.0.0" in us.listed()
    backport = parse_listing(captured("package-info-backport-primary.json"), "p", "x")
    assert backport.versions["0.1.0"].shasum is None  # old versions have only dist.tarball


def test_catalogs_in_both_casings() -> None:
    primary = parse_catalog(captured("catalog-us-core-primary.json"), "p")
    secondary = parse_catalog(captured("catalog-us-core-secondary.json"), "s")
    assert [e.name for e in primary] == [e.name for e in secondary] == ["hl7.fhir.us.core"]
    assert primary[0].fhir_version == secondary[0].fhir_version == "R4"
    assert primary[0].version is None and secondary[0].version == "6.1.0"
    assert primary[0].description and secondary[0].canonical == "http://hl7.org/fhir/us/core"
    assert parse_catalog({"not": "a list"}, "p") == [] and parse_catalog([], "p") == []


def test_npm_aliases_name_several_versions_of_one_package() -> None:
    deps = dependency_list(captured("package-pct-2-0-0-aliased.json")["dependencies"])  # type: ignore[index]
    assert ("hl7.fhir.us.core", "7.0.0") in deps and ("hl7.fhir.us.core", "6.1.0") in deps
    assert ("hl7.fhir.us.core", "3.1.1") in deps and len(deps) == 8


def test_ci_build_list() -> None:
    qas = captured("qas-backport.json")
    assert newest_build(qas, "hl7.fhir.uv.subscriptions-backport") == (
        "HL7/fhir-subscription-backport-ig/branches/master"
    )
    assert newest_build(qas, "hl7.fhir.uv.subscriptions-backport", "propose-changes") == (
        "HL7/fhir-subscription-backport-ig/branches/propose-changes"
    )
    assert newest_build(qas, "nope") is None
    assert build_date("Mon, 11 Sep, 2023 04:37:21 +0000") is not None
    full = captured("qas-full.json")
    assert isinstance(full, list) and newest_build(full, "hl7.fhir.us.core")


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after("3") == 3.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after(None) is None and retry_after("soon") is None


# --- version rules against the mimic -----------------------------------------------------------


async def test_version_rules() -> None:
    with serve_registry(None) as reg:
        for v in ("6.0.0", "6.1.0-snapshot1", "6.1.0", "5.0.0", "5.0.1", "7.0.0-ballot", "8.0.0"):
            reg.add("x.core", v, make_package("x.core", v))
        reg.unlisted.add("x.core#8.0.0")
        regs = client(reg)
        assert str((await regs.resolve("x.core", None)).pid) == "x.core#6.1.0"  # unlisted 8.0.0 skipped
        assert (await regs.resolve("x.core", "5.0.x")).pid.version == "5.0.1"
        assert (await regs.resolve("x.core", "6.0.0")).pid.version == "6.0.0"
        assert (await regs.resolve("x.core", "8.0.0")).pid.version == "8.0.0"  # exact: still served
        retried = await regs.resolve("x.core", "5.0.7")
        assert retried.pid.version == "5.0.1" and "5.0.x resolved to 5.0.1" in (retried.note or "")
        with pytest.raises(NotFound, match="no matching version"):
            await regs.resolve("x.core", "4.0.0")
        with pytest.raises(NotFound, match="unknown package"):
            await regs.resolve("y.other", None)
        with pytest.raises(ValueError, match="patch wildcard"):
            await regs.resolve("x.core", "x.x")
        with pytest.raises(NotFound, match="local build"):
            await regs.resolve("x.core", "dev")
        with pytest.raises(ValueError):
            await regs.resolve("../etc", None)  # never looked up


async def test_first_success_wins_in_order(two: tuple[Registry, Registry]) -> None:
    primary, secondary = two
    regs = client(primary, secondary)
    res = await regs.resolve("hl7.fhir.us.core", None)  # 404 at the primary, found at the secondary
    fetched = await regs.fetch(res)
    assert fetched.source == secondary.base and res.pid.version == "3.1.1"
    assert (
        fetched.verified.sha1
        == hashlib.sha1((PACKAGES / "hl7.fhir.us.core#3.1.1.tgz").read_bytes()).hexdigest()
    )
    assert "/packages/hl7.fhir.us.core/3.1.1" in secondary.requests  # GET {base}/{name}/{version}
    primary.add("hl7.fhir.us.core", "3.1.1", (PACKAGES / "hl7.fhir.us.core#3.1.1.tgz").read_bytes())
    again = await regs.fetch(await regs.resolve("hl7.fhir.us.core", "3.1.1"))
    assert again.source == primary.base


async def test_5xx_retried_then_next_registry(two: tuple[Registry, Registry]) -> None:
    primary, secondary = two
    primary.add("hl7.fhir.us.core", "3.1.1", (PACKAGES / "hl7.fhir.us.core#3.1.1.tgz").read_bytes())
    primary.fail_next = 2  # two 503s, then answers: retried transparently
    regs = client(primary, secondary)
    assert (await regs.fetch(await regs.resolve("hl7.fhir.us.core", "3.1.1"))).source == primary.base
    primary.fail_next = 100  # never recovers: the secondary serves it
    res = await regs.resolve("hl7.fhir.us.core", "3.1.1")
    assert (await regs.fetch(res)).source == secondary.base


async def test_429_retry_after_is_honoured() -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    with serve_registry(None) as reg:
        reg.add("x.core", "1.0.0", make_package("x.core", "1.0.0"))
        reg.throttle_next, reg.retry_after = 2, "2"
        http = Http([reg.base], limits=FAST, sleep=sleep)
        listing = await HttpRegistry(reg.base, http).listing("x.core")
        assert listing is not None and slept == [2.0, 2.0]
        reg.throttle_next, reg.retry_after = 1, "3600"  # longer than we wait: give up on this registry
        with pytest.raises(Exception, match="Retry-After longer"):
            await HttpRegistry(reg.base, http).listing("x.core")


async def test_slow_answer_past_the_timeout_moves_on(two: tuple[Registry, Registry]) -> None:
    primary, secondary = two
    primary.add("hl7.fhir.us.core", "3.1.1", (PACKAGES / "hl7.fhir.us.core#3.1.1.tgz").read_bytes())
    primary.slow, primary.slow_seconds = (
        {"hl7.fhir.us.core/3.1.1", "hl7.fhir.us.core/-/hl7.fhir.us.core-3.1.1.tgz"},
        2.0,
    )
    limits = HttpLimits(timeout=0.3, total_timeout=1.0, attempts=2, backoff=0.01)
    regs = client(primary, secondary, limits=limits)
    fetched = await regs.fetch(await regs.resolve("hl7.fhir.us.core", "3.1.1"))
    assert fetched.source == secondary.base


# --- integrity and hostile tarballs ------------------------------------------------------------


async def test_corrupt_wrong_shasum_and_wrong_version_fail_the_package() -> None:
    with serve_registry(None) as reg:
        reg.add("a.pkg", "1.0.0", make_package("a.pkg", "1.0.0"))
        reg.add("b.pkg", "1.0.0", make_package("b.pkg", "1.0.0"))
        reg.add("c.pkg", "1.0.0", make_package("c.pkg", "2.0.0"))  # package.json says 2.0.0
        reg.corrupt.add("a.pkg#1.0.0")
        reg.wrong_shasum.add("b.pkg#1.0.0")
        regs = client(reg)
        with pytest.raises(
            PackageRejected, match=r"a\.pkg#1\.0\.0: .*corrupt tarball|a\.pkg#1\.0\.0: .*SHA-1"
        ):
            await regs.fetch(await regs.resolve("a.pkg", "1.0.0"))
        with pytest.raises(PackageRejected, match=r"does not match the registry's dist\.shasum"):
            await regs.fetch(await regs.resolve("b.pkg", "1.0.0"))
        with pytest.raises(PackageRejected, match=r"names c\.pkg#2\.0\.0, not the requested c\.pkg#1\.0\.0"):
            await regs.fetch(await regs.resolve("c.pkg", "1.0.0"))


def test_shasum_case_does_not_matter() -> None:
    data = make_package("a.pkg", "1.0.0")
    sha1 = hashlib.sha1(data).hexdigest()
    v = verify(data, PackageId("a.pkg", "1.0.0"), shasum=sha1.upper())
    assert v.sha256 == hashlib.sha256(data).hexdigest() and v.sha1 == sha1 and not v.normalised
    assert v.tgz is data


@pytest.mark.parametrize("top", ["", "a.pkg/"])
def test_other_layouts_are_repacked_under_package(top: str) -> None:
    data = make_package(
        "a.pkg",
        "1.0.0",
        top=top,
        extra={
            "StructureDefinition-x.json": b'{"resourceType":"StructureDefinition","id":"x","url":"http://x/x"}'
        },
    )
    v = verify(data, PackageId("a.pkg", "1.0.0"))
    assert v.normalised and v.sha256 == hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(v.tgz), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["package/StructureDefinition-x.json", "package/package.json"]
    assert [e.url for e in v.package().entries] == ["http://x/x"]
    assert verify(data, PackageId("a.pkg", "1.0.0")).tgz == v.tgz  # deterministic


@pytest.mark.parametrize("bad", ["../evil.json", "/etc/passwd", "package/../../x.json"])
def test_entries_escaping_the_package_are_rejected(bad: str) -> None:
    data = make_package("a.pkg", "1.0.0", extra={bad: b"{}"}, top="package/")
    if not bad.startswith(("/", "..")):
        data = make_package("a.pkg", "1.0.0", top="")  # rebuilt below with the raw name
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
            for name, body in ((bad, b"{}"), ("package/package.json", b'{"name":"a.pkg","version":"1.0.0"}')):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        data = out.getvalue()
    with pytest.raises(PackageRejected, match=r"'\.\.'|absolute path"):
        verify(data, PackageId("a.pkg", "1.0.0"))


def test_gzip_bomb_stops_at_the_cap() -> None:
    zeros = b"\x00" * (8 * 1024 * 1024)
    data = make_package("a.pkg", "1.0.0", extra={"big.json": zeros})
    assert len(data) < 64 * 1024
    with pytest.raises(PackageRejected, match="unpacks to more than"):
        verify(data, PackageId("a.pkg", "1.0.0"), limits=TarLimits(max_unpacked_bytes=1024 * 1024))
    with pytest.raises(PackageRejected, match="more than 1 entries"):
        verify(data, PackageId("a.pkg", "1.0.0"), limits=TarLimits(max_entries=1))


def test_unparseable_manifest_names_package_and_file() -> None:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("package/package.json")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"{nope"))
    with pytest.raises(PackageRejected, match=r"a\.pkg#1\.0\.0: package/package\.json: not valid JSON"):
        verify(out.getvalue(), PackageId("a.pkg", "1.0.0"))
    with pytest.raises(PackageRejected, match="corrupt tarball"):
        verify(b"\x1f\x8b not really", PackageId("a.pkg", "1.0.0"))


async def test_download_size_limit() -> None:
    with serve_registry(None) as reg:
        reg.add("a.pkg", "1.0.0", make_package("a.pkg", "1.0.0", extra={"x.bin": os.urandom(64 * 1024)}))
        http = Http([reg.base], limits=HttpLimits(attempts=1, max_bytes=10_000))
        with pytest.raises(Exception, match="byte limit"):
            await HttpRegistry(reg.base, http).tarball(PackageId("a.pkg", "1.0.0"), None)


# --- only configured hosts, tokens per registry ------------------------------------------------


async def test_only_configured_hosts_are_contacted() -> None:
    with serve_registry(None) as reg, serve_registry(None) as elsewhere:
        elsewhere.add("a.pkg", "1.0.0", make_package("a.pkg", "1.0.0"))
        http = Http([reg.base], limits=FAST)
        with pytest.raises(HostNotAllowed):
            await http.get(f"{elsewhere.base}/a.pkg")
        # An npm registry whose dist.tarball points elsewhere: the other host is never asked.
        reg.add("a.pkg", "1.0.0", make_package("a.pkg", "1.0.0"))
        npm = HttpRegistry(reg.base, http, kind="npm")
        listing = await npm.listing("a.pkg")
        assert listing is not None
        info = listing.versions["1.0.0"]
        moved = type(info)(info.version, info.shasum, f"{elsewhere.base}/a.pkg/1.0.0")
        assert (await npm.tarball(PackageId("a.pkg", "1.0.0"), moved))[:2] == b"\x1f\x8b"
        assert elsewhere.requests == [] and any("/-/a.pkg-1.0.0.tgz" in p for p in reg.requests)
        with pytest.raises(HostNotAllowed):
            await Http([reg.base]).get("file:///etc/passwd")


async def test_bearer_token_goes_to_its_registry_only(two: tuple[Registry, Registry]) -> None:
    primary, secondary = two
    primary.token = "s3cret"
    regs = client(primary, secondary, tokens={primary.base: "s3cret"})
    primary.add("a.pkg", "1.0.0", make_package("a.pkg", "1.0.0"))
    assert (await regs.fetch(await regs.resolve("a.pkg", None))).source == primary.base
    await regs.resolve("hl7.fhir.us.core", None)
    assert set(primary.auth) == {"Bearer s3cret"} and set(secondary.auth) == {None}
    with pytest.raises(NotFound, match="HTTP 401"):
        await client(primary).resolve("a.pkg", None)  # no token: the 401 is reported


async def test_current_from_the_ci_build_list(tmp_path: Path) -> None:
    with serve_registry(None) as ci:
        qas = [{"package-id": "a.pkg", "date": "Mon, 11 Sep, 2023 04:37:21 +0000", "repo": "HL7/a/branches/master/qa.json"},
               {"package-id": "a.pkg", "date": "Tue, 12 Sep, 2023 04:37:21 +0000", "repo": "HL7/a/branches/dev/qa.json"}]  # fmt: skip
        ci.files["/ig/qas.json"] = json.dumps(qas).encode()
        ci.files["/ig/HL7/a/branches/master/package.tgz"] = make_package("a.pkg", "1.1.0")
        settings = IngestSettings(ci_build_url=f"{ci.base}/ig", allowed_hosts="")
        regs = make_registries([str(tmp_path)], settings)
        res = await regs.resolve("a.pkg", "current")
        fetched = await regs.fetch(res)
        assert str(res.pid) == "a.pkg#current" and fetched.verified.manifest["version"] == "1.1.0"
        with pytest.raises(NotFound, match="no CI build"):
            await regs.resolve("a.pkg", "current$nope")


async def test_directory_registry_and_a_request_limited_to_one_registry(small: Path) -> None:
    regs = make_registries([str(small), "https://packages.fhir.org"], IngestSettings())
    res = await regs.resolve("hl7.fhir.us.core", None)
    assert (await regs.only(str(small)).fetch(res)).source == str(small)
    with pytest.raises(ValueError, match="not configured"):
        regs.only("https://registry.npmjs.org")
    assert [e.name for e in await DirectoryRegistry(small).catalog("us.core", None, None)] == [
        "hl7.fhir.us.core"
    ]


def test_fetch_error_is_reported_with_the_url() -> None:
    assert issubclass(HostNotAllowed, FetchError)
