"""The replica's local package cache (validator_service/tarball_cache.py), without servers: what
it loads is what the tarball holds, written whole or not at all, found only by its SHA-256."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from validator_service.tarball_cache import TMP, TarballCache

from fhirschema.context import FhirContext
from fhirschema.package import load_tgz
from tests.conftest import PACKAGES

US_CORE = PACKAGES / "hl7.fhir.us.core#3.1.1.tgz"


def test_a_cached_package_holds_what_its_tarball_holds(tmp_path: Path) -> None:
    data = US_CORE.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    cache = TarballCache(tmp_path / "cache")
    assert cache.load(sha) is None  # nothing cached yet
    thread = cache.save_later(sha, data)
    assert thread is not None
    thread.join(60)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [sha]  # no temporary folder left
    cached, original = cache.load(sha), load_tgz(US_CORE)
    assert cached is not None and cached.id == original.id and cached.manifest == original.manifest
    assert [(e.filename, e.url, e.version) for e in cached.entries] == [
        (e.filename, e.url, e.version) for e in original.entries
    ]
    url = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
    assert FhirContext([cached]).resource(url) == FhirContext([original]).resource(url)
    assert cache.save_later(sha, data) is None  # written once


def test_only_a_digest_names_a_folder_and_a_bad_tarball_leaves_nothing(tmp_path: Path) -> None:
    cache = TarballCache(tmp_path)
    assert cache.load("../etc") is None and cache.save_later("../x", b"") is None
    thread = cache.save_later("ab" * 32, b"not a tarball")
    assert thread is not None
    thread.join(10)
    assert list(tmp_path.iterdir()) == []
    assert TarballCache(None).load("ab" * 32) is None and TarballCache(None).save_later("ab", b"") is None


def test_prune_keeps_what_is_registered_or_recently_used(tmp_path: Path) -> None:
    old = time.time() - 8 * 86400
    for name in ("registered", "recent", "unused", f"{TMP}crashed-1"):
        (tmp_path / name).mkdir()
    for name in ("registered", "unused", f"{TMP}crashed-1"):
        os.utime(tmp_path / name, (old, old))
    TarballCache(tmp_path).prune(["registered"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recent", "registered"]


def test_local_mode_reads_a_tarball_through_the_cache_by_its_digest(tmp_path: Path) -> None:
    """FHIRSCHEMA_VALIDATOR_PACKAGES=<file>.tgz: unpacked from the file once, read from the cache
    folder on the next start, and a changed file is never answered from the old folder."""
    from validator_service.materialise import LocalPackages

    tgz = tmp_path / "files" / "us-core.tgz"
    tgz.parent.mkdir()
    tgz.write_bytes(US_CORE.read_bytes())
    cache = TarballCache(tmp_path / "cache")
    core = "hl7.fhir.r4.core#4.0.1"
    url = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"

    first = LocalPackages([str(tgz)], core, cache)
    loaded = first.load()
    pid = "hl7.fhir.us.core#3.1.1"
    sha = hashlib.sha256(tgz.read_bytes()).hexdigest()
    assert loaded.digests[pid] == sha and loaded.packages[pid].source == str(tgz)
    for thread in first.write_cache():
        thread.join(60)
    assert (tmp_path / "cache" / sha).is_dir() and first.write_cache() == []  # written once

    second = LocalPackages([str(tgz)], core, cache)
    again = second.load()
    pkg = again.packages[pid]
    assert second.write_cache() == []  # nothing unpacked from the file: it came from the folder
    assert pkg._root is not None and (tmp_path / "cache" / sha) in pkg._root.parents
    assert pkg.source == str(tgz) and again.digests[pid] == sha  # named as configured
    assert FhirContext([pkg]).resource(url) == FhirContext([loaded.packages[pid]]).resource(url)

    tgz.write_bytes((PACKAGES / "hl7.fhir.us.core#6.1.0.tgz").read_bytes())  # the file changed
    changed = LocalPackages([str(tgz)], core, cache).load()
    assert "hl7.fhir.us.core#6.1.0" in changed.packages and pid not in changed.packages
