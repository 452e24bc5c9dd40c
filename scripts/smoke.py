"""Smoke test of a running stack (`make up`): every point of issue 9's "done when", asked the way
a new user would, starting with the first request right after `/ready`.

    python scripts/smoke.py http://127.0.0.1:8080            # then stops the `make up` it found
    python scripts/smoke.py http://127.0.0.1:8080 --keep-running

Checks, in order: `/ready` becomes 200; right after it, a bad Patient is invalid (both of its
errors named); `{"resourceType": "Foo"}` is invalid; a FamilyMemberHistory with `status: bogus`
and an unknown element is invalid on both counts; `GET /schemas?package=hl7.fhir.r4.core#4.0.1`
lists 658 distinct schemas (ids and url|version), each one retrievable; a profile uploaded, then
replaced, is enforced within 2 s each time; JSON nested 600 deep is a 4xx OperationOutcome; and a
SIGTERM to the `make up` supervisor (its PID from the stack's state.json) leaves none of its
processes running within 5 s. One line per check; exit status 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

CORE = "hl7.fhir.r4.core#4.0.1"
CORE_SCHEMAS = 658  # StructureDefinitions in R4 core 4.0.1
BAD_PATIENT = {"resourceType": "Patient", "gender": "banana", "birthDate": "not-a-date"}
FAMILY_MEMBER_HISTORY = {
    "resourceType": "FamilyMemberHistory",
    "status": "bogus",
    "patient": {"reference": "Patient/example"},
    "relationship": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FTH"}]
    },
    "smokeUnknownElement": True,
}
CHANGE_SECONDS = 2.0  # issue 9 §2: a schema change reaches every replica within 2 s
STOP_SECONDS = 5.0  # issue 9 §5: the first SIGTERM stops everything within 5 s
DEPTH = 600


class Failed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def verdict(r: httpx.Response) -> str:
    check(r.status_code == 200, f"HTTP {r.status_code}: {r.text[:300]}")
    return r.headers.get("x-validation-result", "?")


def errors(r: httpx.Response) -> list[dict[str, Any]]:
    return [i for i in r.json().get("issue", []) if i.get("severity") in ("error", "fatal")]


def mentions(issues: list[dict[str, Any]], word: str) -> bool:
    return any(word in json.dumps(i) for i in issues)


def invalid_naming(r: httpx.Response, *words: str) -> str:
    got = verdict(r)
    check(got == "invalid", f"verdict {got!r}, expected invalid: {r.text[:300]}")
    issues = errors(r)
    for word in words:
        check(mentions(issues, word), f"no error names {word!r}: {r.text[:500]}")
    return f"{len(issues)} error(s)"


class Smoke:
    def __init__(self, url: str, ready_timeout: float) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=60)
        self.ready_timeout = ready_timeout

    def validate(self, resource: Any, **params: str) -> httpx.Response:
        return self.http.post("/validate", json=resource, params=params)

    def ready(self) -> str:
        t0 = time.monotonic()
        while True:
            try:
                r = self.http.get("/ready", timeout=5)
                if r.status_code == 200:
                    return f"after {time.monotonic() - t0:.1f}s of waiting"
                why = r.text[:300]
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
            check(
                time.monotonic() - t0 < self.ready_timeout, f"not ready in {self.ready_timeout:.0f}s: {why}"
            )
            time.sleep(0.05)  # poll closely: the next request is the first after /ready

    def bad_patient(self) -> str:
        return invalid_naming(self.validate(BAD_PATIENT), "banana", "not-a-date")

    def unknown_type(self) -> str:
        return invalid_naming(self.validate({"resourceType": "Foo"}), "Foo")

    def family_member_history(self) -> str:
        return invalid_naming(self.validate(FAMILY_MEMBER_HISTORY), "bogus", "smokeUnknownElement")

    def core_schemas(self) -> str:
        records: list[dict[str, Any]] = []
        while True:
            r = self.http.get("/schemas", params={"package": CORE, "limit": 1000, "offset": len(records)})
            check(r.status_code == 200, f"GET /schemas: HTTP {r.status_code}: {r.text[:300]}")
            page = r.json()
            records += page
            if not page or len(records) >= int(r.headers.get("x-total-count", len(records))):
                break
        ids = {rec["id"] for rec in records}
        canonicals = {f"{rec.get('url')}|{rec.get('version')}" for rec in records}
        check(
            len(records) == len(ids) == len(canonicals) == CORE_SCHEMAS,
            f"{len(records)} records, {len(ids)} distinct ids, {len(canonicals)} distinct url|version "
            f"(expected {CORE_SCHEMAS} of each)",
        )
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: self.http.get(f"/schemas/{i}").status_code, sorted(ids)))
        missing = len(statuses) - statuses.count(200)
        check(missing == 0, f"{missing} of {len(ids)} schemas not retrievable")
        return f"{len(ids)} distinct, every one retrievable"

    def uploaded_then_replaced(self) -> str:
        url = f"http://example.org/smoke/StructureDefinition/{uuid.uuid4().hex[:12]}"
        only_gender = {"resourceType": "Patient", "gender": "male"}

        def until(expected: str, what: str) -> float:
            t0 = time.monotonic()
            while (got := verdict(self.validate(only_gender, profile=url))) != expected:
                check(
                    time.monotonic() - t0 < CHANGE_SECONDS, f"{what}: still {got!r} after {CHANGE_SECONDS}s"
                )
            return time.monotonic() - t0

        r = self.http.post("/schemas", json=profile_requiring(url, "birthDate"))
        check(r.status_code == 201, f"POST /schemas: HTTP {r.status_code}: {r.text[:300]}")
        schema_id = r.json()["id"]
        try:
            uploaded = until("invalid", "the uploaded profile (birthDate required)")
            r = self.http.put(f"/schemas/{schema_id}", json=profile_requiring(url, "gender"))
            check(r.status_code == 200, f"PUT /schemas/{schema_id}: HTTP {r.status_code}: {r.text[:300]}")
            replaced = until("valid", "the replacement (gender required)")
            missing_gender = self.validate({"resourceType": "Patient"}, profile=url)
            invalid_naming(missing_gender, "gender")
        finally:
            self.http.delete(f"/schemas/{schema_id}")
        return f"enforced after {uploaded:.2f}s, replacement after {replaced:.2f}s"

    def deep_nesting(self) -> str:
        body = '{"resourceType": "Patient", "extension": ' + "[" * DEPTH + "]" * DEPTH + "}"
        r = self.http.post("/validate", content=body, headers={"content-type": "application/fhir+json"})
        check(400 <= r.status_code < 500, f"HTTP {r.status_code}, expected a 4xx: {r.text[:300]}")
        outcome = r.json()
        check(outcome.get("resourceType") == "OperationOutcome", f"not an OperationOutcome: {r.text[:300]}")
        return f"HTTP {r.status_code} OperationOutcome"


def profile_requiring(url: str, element: str) -> dict[str, Any]:
    """A FHIRSchema profile of Patient that makes `element` required (as tests/services/fakes.py)."""
    return {
        "url": url, "type": "Patient", "kind": "resource", "derivation": "constraint",
        "base": "http://hl7.org/fhir/StructureDefinition/Patient", "required": [element], "elements": {},
    }  # fmt: skip


def alive(pid: int) -> bool:
    """Running (a zombie, already dead but not reaped by its parent, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stack_pids(state: dict[str, Any]) -> list[int]:
    """The supervisor, its servers and services, and anything else marked with its run id
    (valkey-server rewrites its environment: its PID comes from the state file)."""
    pids = {int(p) for p in [*state.get("servers", {}).values(), *state.get("services", {}).values()]}
    if state.get("supervisor"):
        pids.add(int(state["supervisor"]))
    run = state.get("run")
    if run:
        needle = f"FHIRSCHEMA_DEVSTACK_RUN={run}".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if needle in (entry / "environ").read_bytes().split(b"\0"):
                        pids.add(int(entry.name))
                except OSError:
                    continue
    return sorted(p for p in pids if p != os.getpid() and alive(p))


def stop_stack(state_file: Path) -> str:
    check(state_file.is_file(), f"no {state_file}: is `make up` running here (or give --stack-dir)?")
    state = json.loads(state_file.read_text())
    supervisor = state.get("supervisor")
    check(bool(supervisor) and alive(int(supervisor)), f"no running supervisor in {state_file}")
    running = stack_pids(state)
    t0 = time.monotonic()
    os.kill(int(supervisor), signal.SIGTERM)
    while (left := stack_pids(state)) and time.monotonic() - t0 < STOP_SECONDS:
        time.sleep(0.05)
    check(not left, f"still running {STOP_SECONDS:.0f}s after SIGTERM: {left}")
    return f"{len(running)} processes gone {time.monotonic() - t0:.1f}s after SIGTERM"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gateway", nargs="?", default="http://127.0.0.1:8080", help="the gateway's URL")
    ap.add_argument("--stack-dir", type=Path, default=Path(os.environ.get("FHIRSCHEMA_DEVSTACK_DIR", ".devstack")),
                    help="the make-up folder holding state.json (default .devstack)")  # fmt: skip
    ap.add_argument("--keep-running", action="store_true", help="do not SIGTERM the stack at the end")
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for /ready")
    args = ap.parse_args(argv)
    smoke = Smoke(args.gateway, args.ready_timeout)
    checks: list[tuple[str, Callable[[], str]]] = [
        ("/ready", smoke.ready),
        ("first request after /ready: bad Patient invalid", smoke.bad_patient),
        ("Foo invalid", smoke.unknown_type),
        ("FamilyMemberHistory checked (status bogus, unknown element)", smoke.family_member_history),
        (f"{CORE_SCHEMAS} distinct {CORE} schemas", smoke.core_schemas),
        (f"uploaded-then-replaced profile within {CHANGE_SECONDS:g}s", smoke.uploaded_then_replaced),
        (f"{DEPTH}-deep nesting is a 4xx", smoke.deep_nesting),
    ]
    if not args.keep_running:
        checks.append((f"SIGTERM stops everything within {STOP_SECONDS:g}s",
                       lambda: stop_stack(args.stack_dir / "state.json")))  # fmt: skip
    failed = 0
    for name, run in checks:
        t0 = time.monotonic()
        try:
            detail = run()
        except (Failed, httpx.HTTPError, ValueError, KeyError) as e:
            failed += 1
            print(
                f"FAIL {name}: {type(e).__name__ + ': ' if not isinstance(e, Failed) else ''}{e}", flush=True
            )
            if name == "/ready":
                break  # nothing else can be asked of a stack that is not ready
            continue
        print(f"ok   {name}: {detail} ({time.monotonic() - t0:.2f}s)", flush=True)
    print(
        f"{len(checks) - failed} of {len(checks)} checks passed"
        if not failed
        else f"{failed} check(s) FAILED"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
