"""A local FHIR package registry mimicking packages.fhir.org (see shared/fhir/registry/PROTOCOL.md).

Serves the `<name>#<version>.tgz` files of one directory:
  GET /{name} and /{name}/          -> listing JSON (dist-tags.latest, versions[v].dist.shasum/tarball)
  GET /{name}/{version}             -> the tarball bytes
  GET /{name}/-/{name}-{version}.tgz -> the tarball bytes
  anything unknown                  -> 404
`fail_next` makes the next N requests answer 503 (to exercise client retries).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _version_key(v: str) -> tuple:
    core, _, pre = v.partition("-")
    return (tuple(int(p) if p.isdigit() else -1 for p in core.split(".")), 0 if pre else 1, pre)


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.base = ""
        self.fail_next = 0
        self.requests: list[str] = []

    def versions(self, name: str) -> dict[str, Path]:
        out = {}
        for p in self.root.glob(f"{name}#*.tgz"):
            out[p.name[len(name) + 1 : -4]] = p
        return out

    def listing(self, name: str) -> dict | None:
        vs = self.versions(name)
        if not vs:
            return None
        stable = [v for v in vs if "-" not in v] or list(vs)
        versions = {
            v: {
                "name": name, "version": v, "description": "None.",
                "dist": {"shasum": hashlib.sha1(p.read_bytes()).hexdigest(), "tarball": f"{self.base}/{name}/{v}"},
                "fhirVersion": "R4", "url": f"{self.base}/{name}/{v}",
            }
            for v, p in sorted(vs.items(), key=lambda kv: _version_key(kv[0]))
        }  # fmt: skip
        return {
            "_id": name,
            "name": name,
            "dist-tags": {"latest": max(stable, key=_version_key)},
            "versions": versions,
        }


def _handler(reg: Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            reg.requests.append(self.path)
            if reg.fail_next > 0:
                reg.fail_next -= 1
                return self._send(503, b"Service Unavailable", "text/plain")
            path = self.path.split("?", 1)[0].strip("/")
            parts = path.split("/")
            if len(parts) == 1 and parts[0]:
                listing = reg.listing(parts[0])
                if listing is not None:
                    return self._send(200, json.dumps(listing).encode(), "application/json")
            elif len(parts) == 2:
                tgz = reg.versions(parts[0]).get(parts[1])
                if tgz is not None:
                    return self._send(200, tgz.read_bytes(), "application/tar+gzip")
            elif len(parts) == 3 and parts[1] == "-":
                m = re.fullmatch(re.escape(parts[0]) + r"-(.+)\.tgz", parts[2])
                tgz = reg.versions(parts[0]).get(m.group(1)) if m else None
                if tgz is not None:
                    return self._send(200, tgz.read_bytes(), "application/tar+gzip")
            return self._send(404, b'{"error":"Not found"}', "application/json")

    return Handler


@contextmanager
def serve_registry(root: Path, prefix: str = "") -> Iterator[Registry]:
    """Run the registry on a free loopback port; `reg.base` is its base URL."""
    reg = Registry(root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(reg))
    reg.base = f"http://127.0.0.1:{server.server_address[1]}{prefix}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield reg
    finally:
        server.shutdown()
        server.server_close()
