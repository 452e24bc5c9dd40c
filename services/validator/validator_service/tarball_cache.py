"""A replica's local copy of the package tarballs it materialised, unpacked, by SHA-256.

Reading R4 core's tarball (12 MB gzip, 4,581 resources, 45 MB unpacked) from S3 and unpacking it
took 0.7-3 s of a replica's start; the unpacked folder is read like the CLI's package cache
(`load_directory`: package.json and .index.json now, each resource from disk on first use),
in about 0.1 s. A folder is named by the SHA-256 the repository registered, and was written
only after the download matched it, so what it holds is what the repository holds: a package
replaced under the same name#version has another SHA-256, hence another folder.

Written once, after the replica is ready (a thread of its own: never on the way to /ready),
into a temporary folder renamed into place, so a replica killed mid-write leaves no half
package; folders of packages the repository no longer registers are removed. Any failure here
is a warning: the replica then reads S3, as without a cache.
"""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from fhirschema.package import Package, PackageError, load_directory

log = logging.getLogger("fhirschema.validator")
TMP = ".tmp-"


class TarballCache:
    def __init__(self, root: Path | None) -> None:
        self.root = root  # None: no cache

    def _folder(self, sha256: str) -> Path | None:
        if self.root is None or not sha256.isalnum():  # a digest, never a path
            return None
        return self.root / sha256

    def load(self, sha256: str) -> Package | None:
        """The package unpacked under this digest, or None (not cached, or unreadable)."""
        folder = self._folder(sha256)
        if folder is None or not (folder / "package" / "package.json").is_file():
            return None
        try:
            pkg = load_directory(folder)
            folder.touch()  # loaded: not pruned
            return pkg
        except (PackageError, OSError) as e:
            log.warning("cached package %s unreadable (%s): read from S3 instead", folder, e)
            return None

    def save_later(self, sha256: str, tgz: bytes) -> threading.Thread | None:
        """Unpack `tgz` (its SHA-256 already checked) into the cache, in a thread of its own."""
        folder = self._folder(sha256)
        if folder is None or folder.exists():
            return None
        thread = threading.Thread(target=self._save, args=(folder, tgz), name="tarball-cache", daemon=True)
        thread.start()
        return thread

    def _save(self, folder: Path, tgz: bytes) -> None:
        t0 = time.perf_counter()
        tmp = folder.with_name(f"{TMP}{folder.name}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir(parents=True)
            with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/")]
                tar.extractall(tmp, members=members, filter="data")  # no links, no paths outside
            tmp.rename(folder)  # atomic: the folder is whole or absent
            log.info("package cached in %s (%.1f s)", folder, time.perf_counter() - t0)
        except FileExistsError:
            pass  # another replica on this machine wrote it first
        except (OSError, tarfile.TarError, EOFError) as e:
            log.warning("package not cached in %s: %s", folder, e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def prune(self, keep: Iterable[str], unused_seconds: float = 7 * 86400.0) -> None:
        """Remove folders of packages not registered here and not loaded for a week (another
        stack on this machine may share the folder), and temporary ones left by a crash."""
        if self.root is None or not self.root.is_dir():
            return
        wanted = set(keep)
        for entry in self.root.iterdir():
            try:
                age = time.time() - entry.stat().st_mtime
            except OSError:
                continue
            if entry.name not in wanted and age > (3600.0 if entry.name.startswith(TMP) else unused_seconds):
                shutil.rmtree(entry, ignore_errors=True)
