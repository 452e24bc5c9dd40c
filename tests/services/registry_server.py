"""A local FHIR package registry that behaves like packages.fhir.org or packages2.fhir.org
(see ../shared/fhir/registry/PROTOCOL.md), with the faults a client must survive.

Serves the `<name>#<version>.tgz` files of a directory plus packages added in memory:
  GET {base}/{name} and /{name}/        -> listing JSON in the chosen style ("primary": lower-case
                                           shasum, "None." descriptions; "secondary": upper-case
                                           shasum, `count` as a string, tarball URLs without the
                                           base path)
  GET {base}/{name}/{version}           -> the tarball bytes
  GET {base}/{name}/-/{name}-{v}.tgz    -> the tarball bytes
  GET {base}/catalog?name=&canonical=&fhirversion= -> PascalCase (primary) / camelCase (secondary)
  anything unknown                      -> 404
Faults: `fail_next` 503s, `throttle_next` 429s with `Retry-After: retry_after`, `slow` paths that
stall for `slow_seconds`, `corrupt` specs served as garbage, `wrong_shasum` specs advertised with
a wrong SHA-1, `token` (then 401 without `Authorization: Bearer <token>`), `unlisted` versions.
`files` serves any other path (package feeds, a CI build list).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fhirschema.ids import newest, version_key


def make_package(
    name: str,
    version: str,
    *,
    dependencies: dict[str, str] | None = None,
    resources: list[dict[str, Any]] | None = None,
    manifest: dict[str, Any] | None = None,
    top: str = "package/",
    extra: dict[str, bytes] | None = None,
) -> bytes:
    """A small package tarball; `top` is the folder its files sit in ("" = the top)."""
    files: dict[str, bytes] = {}
    doc = {"name": name, "version": version, "fhirVersions": ["4.0.1"],
           "dependencies": dependencies or {}, **(manifest or {})}  # fmt: skip
    files["package.json"] = json.dumps(doc).encode()
    for res in resources or []:
        files[f"{res['resourceType']}-{res['id']}.json"] = json.dumps(res).encode()
    files.update(extra or {})
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for fname, body in files.items():
            info = tarfile.TarInfo(fname if fname.startswith(("/", "..")) else top + fname)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def profile(name: str, base: str = "Patient", url_base: str = "http://example.org/fhir") -> dict[str, Any]:
    """A tiny constraint profile (a differential only) that the converter accepts."""
    return {
        "resourceType": "StructureDefinition", "id": name, "url": f"{url_base}/StructureDefinition/{name}",
        "version": "1.0.0", "name": name, "status": "active", "kind": "resource", "abstract": False,
        "type": base, "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{base}",
        "derivation": "constraint",
        "differential": {"element": [{"id": base, "path": base}, {"id": f"{base}.id", "path": f"{base}.id", "min": 1}]},
    }  # fmt: skip


class Registry:
    def __init__(self, root: Path | None = None, style: str = "primary") -> None:
        self.root = Path(root) if root else None
        self.style = style
        self.base = ""
        self.origin = ""
        self.packages: dict[tuple[str, str], bytes] = {}
        self.descriptions: dict[str, str] = {}
        self.fail_next = 0
        self.throttle_next = 0
        self.retry_after = "1"
        self.slow: set[str] = set()
        self.slow_seconds = 3.0
        self.corrupt: set[str] = set()
        self.wrong_shasum: set[str] = set()
        self.unlisted: set[str] = set()
        self.token: str | None = None
        self.files: dict[str, bytes] = {}  # any other path -> body (feeds, CI build lists)
        self.requests: list[str] = []
        self.auth: list[str | None] = []
        self._lock = threading.Lock()

    def add(self, name: str, version: str, data: bytes, description: str | None = None) -> None:
        self.packages[(name, version)] = data
        if description:
            self.descriptions[name] = description

    def versions(self, name: str) -> dict[str, bytes | Path]:
        out: dict[str, bytes | Path] = {}
        if self.root is not None:
            for p in self.root.glob(f"{name}#*.tgz"):
                out[p.name[len(name) + 1 : -4]] = p
        out.update({v: data for (n, v), data in self.packages.items() if n == name})
        return out

    def names(self) -> set[str]:
        names = {n for n, _ in self.packages}
        if self.root is not None:
            names |= {p.name.split("#", 1)[0] for p in self.root.glob("*#*.tgz")}
        return names

    def body(self, name: str, version: str) -> bytes | None:
        found = self.versions(name).get(version)
        if found is None:
            return None
        data = found.read_bytes() if isinstance(found, Path) else found
        if f"{name}#{version}" in self.corrupt:
            return data[: len(data) // 2] + b"\x00garbage" * 64
        return data

    def _tarball_url(self, name: str, v: str) -> str:
        return f"{self.origin if self.style == 'secondary' else self.base}/{name}/{v}"

    def listing(self, name: str) -> dict | None:
        vs = self.versions(name)
        if not vs:
            return None
        versions = {}
        for v in sorted(vs, key=version_key):
            data = vs[v]
            sha = hashlib.sha1(data.read_bytes() if isinstance(data, Path) else data).hexdigest()
            if f"{name}#{v}" in self.wrong_shasum:
                sha = hashlib.sha1(b"not the tarball").hexdigest()
            entry: dict[str, Any] = {"name": name, "version": v, "fhirVersion": "R4",
                                     "dist": {"tarball": self._tarball_url(name, v)},
                                     "url": f"{self.base}/{name}/{v}"}  # fmt: skip
            if self.style == "secondary":
                entry.update(date="2023-06-30T02:02:46-00:00", kind="IG", count="12",
                             description=self.descriptions.get(name, name))  # fmt: skip
                entry["dist"]["shasum"] = sha.upper()
            else:
                entry["description"] = "None."
                entry["dist"]["shasum"] = sha
            if f"{name}#{v}" in self.unlisted:
                entry["unlisted"] = "true"
            versions[v] = entry
        listed = [v for v in vs if f"{name}#{v}" not in self.unlisted]
        doc = {"_id": name, "name": name, "dist-tags": {"latest": newest(listed)}, "versions": versions}
        if self.style == "secondary" or name in self.descriptions:
            doc["description"] = self.descriptions.get(name, name)
        return doc

    def catalog(self, query: dict[str, list[str]]) -> list[dict]:
        name = (query.get("name") or [""])[0]
        fhirversion = (query.get("fhirversion") or [""])[0]
        out = []
        for n in sorted(self.names()):
            if name and name not in n:
                continue
            if fhirversion and fhirversion not in ("R4", "4.0.1", "4.0"):
                continue
            desc = self.descriptions.get(n, n)
            if self.style == "secondary":
                latest = newest(self.versions(n))
                out.append({"name": n, "version": latest, "fhirVersion": "R4", "description": desc,
                            "canonical": "http://example.org", "kind": "IG",
                            "url": f"{self.base}/{n}/{latest}"})  # fmt: skip
            else:
                out.append({"Name": n, "Description": desc, "FhirVersion": "R4"})
        return out


def _handler(reg: Registry, prefix: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a size limit, a timeout): what is being tested

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            with reg._lock:
                reg.requests.append(self.path)
                reg.auth.append(self.headers.get("Authorization"))
                fail = reg.fail_next > 0
                reg.fail_next -= int(fail)
                throttle = not fail and reg.throttle_next > 0
                reg.throttle_next -= int(throttle)
            if fail:
                return self._send(503, b"Service Unavailable", "text/plain")
            if throttle:
                return self._send(429, b"Too Many Requests", "text/plain", {"Retry-After": reg.retry_after})
            if reg.token is not None and self.headers.get("Authorization") != f"Bearer {reg.token}":
                return self._send(401, b'{"error":"Unauthorized"}', "application/json")
            path = url.path
            # The secondary's tarball URLs lack its base path: serve both.
            path = path[len(prefix) :] if prefix and path.startswith(prefix + "/") else path
            if path.strip("/") in reg.slow:
                time.sleep(reg.slow_seconds)
            if url.path in reg.files:
                body = reg.files[url.path]
                return self._send(200, body, "application/json" if body[:1] in b"[{" else "application/xml")
            parts = path.strip("/").split("/")
            if parts == ["catalog"]:
                body = json.dumps(reg.catalog(parse_qs(url.query))).encode()
                return self._send(200, body, "application/json")
            if len(parts) == 1 and parts[0]:
                listing = reg.listing(parts[0])
                if listing is not None:
                    return self._send(200, json.dumps(listing).encode(), "application/json")
            elif len(parts) == 2:
                tgz = reg.body(parts[0], parts[1])
                if tgz is not None:
                    return self._send(200, tgz, "application/tar+gzip")
            elif len(parts) == 3 and parts[1] == "-":
                m = re.fullmatch(re.escape(parts[0]) + r"-(.+)\.tgz", parts[2])
                tgz = reg.body(parts[0], m.group(1)) if m else None
                if tgz is not None:
                    return self._send(200, tgz, "application/tar+gzip")
            return self._send(404, b'{"error":"Not found"}', "application/json")

    return Handler


@contextmanager
def serve_registry(root: Path | None = None, prefix: str = "", style: str = "primary") -> Iterator[Registry]:
    """Run the registry on a free loopback port; `reg.base` is its base URL (`prefix` included,
    e.g. "/packages" as packages2.fhir.org has)."""
    reg = Registry(root, style)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(reg, prefix))
    server.daemon_threads = True
    reg.origin = f"http://127.0.0.1:{server.server_address[1]}"
    reg.base = reg.origin + prefix
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield reg
    finally:
        server.shutdown()
        server.server_close()
