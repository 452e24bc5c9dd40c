"""Schemathesis over a running gateway's OpenAPI document: generated requests for every
operation, sent over HTTP; what counts as a server error. Used by test_gateway_security.py (a
bounded run) and scripts/fuzz_gateway.py (a longer one).

Generated cases are sent from a thread (schemathesis calls with `requests`): the gateway under
test keeps serving on the caller's event loop.
"""

from __future__ import annotations

import warnings
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings


def server_error(status: int, headers: Any, body: bytes) -> bool:
    """A 5xx the API does not promise: 503 with Retry-After (NATS or an issuer away, the
    validators behind) and 504 with the job id (no result in the time asked for) are answers."""
    if status == 503 and "retry-after" in headers:
        return False
    if status == 504 and b'"job' in body:
        return False
    return status >= 500


def fuzz(base_url: str, headers: dict[str, str], max_examples: int, seed: int = 0) -> tuple[list[str], int]:
    """(the server errors as 'METHOD path -> status: body', how many requests were sent)."""
    import schemathesis

    openapi = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(openapi)
    failures: list[str] = []
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=max_examples, deadline=None, database=None, derandomize=seed == 0,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                  print_blob=False)  # fmt: skip
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            nonlocal sent
            sent += 1
            r = case.call(base_url=base_url, headers=headers, timeout=60)
            if server_error(r.status_code, r.headers, r.content):
                failures.append(f"{case.method} {case.formatted_path} {case.query or ''} -> {r.status_code}: "
                                f"{r.content[:300]!r}")  # fmt: skip

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    return failures, sent
