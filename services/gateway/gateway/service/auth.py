"""Who may do what: the scopes, the API key table, and the decision for one request.

Nothing here knows HTTP: the router layer (gateway.security) hands in the credentials a request
carries and turns the errors into 401 / 403 OperationOutcomes. An API key is never kept: the key
file holds SHA-256 digests, and a presented key's digest is compared with every entry in constant
time (hmac.compare_digest), so neither the file nor the timing gives a key away.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.errors import Forbidden, Unauthorized

VALIDATE = "validate"
CONVERT = "convert"
SCHEMAS_READ = "schemas:read"
SCHEMAS_WRITE = "schemas:write"
IG_ADMIN = "ig:admin"
JOBS_ADMIN = "jobs:admin"
DEAD_LETTERS_ADMIN = "dead-letters:admin"
SCOPES: tuple[str, ...] = (
    VALIDATE, CONVERT, SCHEMAS_READ, SCHEMAS_WRITE, IG_ADMIN, JOBS_ADMIN, DEAD_LETTERS_ADMIN,
)  # fmt: skip
SCOPE_DESCRIPTIONS = {
    VALIDATE: "validate resources (POST /validate, /validate/batch, $validate, WS /validate/stream) "
    "and read those jobs",
    CONVERT: "convert StructureDefinitions (/convert/*)",
    SCHEMAS_READ: "read the schema repository (GET /schemas)",
    SCHEMAS_WRITE: "upload, replace and delete schemas (POST, PUT, DELETE /schemas)",
    IG_ADMIN: "ingest and remove implementation guides (/ig)",
    JOBS_ADMIN: "list, read and cancel every job (/jobs)",
    DEAD_LETTERS_ADMIN: "read and replay dead letters (/dead-letters)",
}
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Principal:
    """Who a request is: the key's name (or the client address when auth is off) and its scopes."""

    name: str
    scopes: frozenset[str]
    via: Literal["api-key", "bearer", "anonymous"]


class TokenError(ValueError):
    """A bearer token that is not valid here; the message says why (never the token)."""


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the line (never a key or digest)."""


@dataclass(frozen=True)
class ApiKey:
    digest: bytes
    scopes: frozenset[str]
    name: str


class ApiKeys:
    """The key table as read from one key file."""

    def __init__(self, keys: Sequence[ApiKey] = ()) -> None:
        self.keys = tuple(keys)

    @classmethod
    def parse(cls, text: str, source: str = "the key file") -> ApiKeys:
        """Lines `<sha256 hex> <scope,scope,...> <name>`; blank lines and `#` comments skipped."""
        keys: list[ApiKey] = []
        seen: set[bytes] = set()
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 2)
            where = f"{source} line {number}"
            if len(parts) != 3:
                raise KeyFileError(f"{where}: expected '<sha256 hex> <scope,scope,...> <name>'")
            digest, scopes, name = parts
            if not _HEX64.fullmatch(digest):
                raise KeyFileError(f"{where}: the first field must be the key's SHA-256 as 64 hex digits")
            wanted = {sc.strip() for sc in scopes.split(",") if sc.strip()}
            if unknown := sorted(wanted - set(SCOPES)):
                raise KeyFileError(
                    f"{where}: unknown scope {', '.join(unknown)} (known: {', '.join(SCOPES)})"
                )
            raw = bytes.fromhex(digest)
            if raw in seen:
                raise KeyFileError(f"{where}: the same key digest is listed twice")
            seen.add(raw)
            keys.append(ApiKey(raw, frozenset(wanted), name.strip()))
        return cls(keys)

    def find(self, presented: str) -> ApiKey | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key in self.keys:  # every entry compared, a match or not: the time says nothing
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found

    def __len__(self) -> int:
        return len(self.keys)


def digest_of(key: str) -> str:
    """The line's first field for `key` (what an operator puts in the key file)."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeySource(Protocol):
    """The API keys in force (an adapter re-reads them when the file changes)."""

    @property
    def keys(self) -> ApiKeys: ...


class TokenVerifier(Protocol):
    """Checks a bearer token (signature, expiry, issuer, audience) and says who it is."""

    async def verify(self, token: str) -> Principal: ...


class Authenticator:
    """The decision for one request: who it is (401 when unknown) and whether it may (403)."""

    def __init__(
        self,
        mode: Literal["required", "off"],
        keys: KeySource | None = None,
        tokens: TokenVerifier | None = None,
    ) -> None:
        self.mode = mode
        self.key_source = keys
        self.tokens = tokens
        self._api_key = 'ApiKey realm="fhirschema", header="X-API-Key"'
        self._bearer = 'Bearer realm="fhirschema"'
        schemes = ([self._api_key] if keys is not None else []) + (
            [self._bearer] if tokens is not None else []
        )
        self.challenge = ", ".join(schemes) or self._api_key
        self.accepted = (
            " or ".join(
                (["an API key in the X-API-Key header"] if keys is not None else [])
                + (["a bearer token (Authorization: Bearer)"] if tokens is not None else [])
            )
            or "an API key in the X-API-Key header"
        )

    @property
    def required(self) -> bool:
        return self.mode == "required"

    async def authenticate(self, api_key: str | None, bearer: str | None, client: str) -> Principal:
        if not self.required:
            return Principal(client, frozenset(SCOPES), "anonymous")
        if api_key:
            if self.key_source is not None and (key := self.key_source.keys.find(api_key)) is not None:
                return Principal(key.name, key.scopes, "api-key")
            raise self.unauthorized("the API key is not valid (unknown, or revoked)")
        if bearer:
            if self.tokens is None:
                raise self.unauthorized("bearer tokens are not accepted here; send an API key (X-API-Key)")
            try:
                return await self.tokens.verify(bearer)
            except TokenError as e:
                # RFC 6750: the Bearer challenge says the token was the problem.
                challenge = f'{self._bearer}, error="invalid_token", error_description="{e}"'
                if self.key_source is not None:
                    challenge = f"{self._api_key}, {challenge}"
                raise Unauthorized(str(e), headers={"WWW-Authenticate": challenge}) from e
        raise self.unauthorized(f"authentication required: send {self.accepted}")

    def authorize(self, principal: Principal, needed: Iterable[str]) -> None:
        if missing := [sc for sc in needed if sc not in principal.scopes]:
            held = ", ".join(sorted(principal.scopes)) or "none"
            raise Forbidden(
                f"this request needs the scope {' and '.join(repr(m) for m in missing)}; "
                f"{principal.name!r} has: {held}"
            )

    def unauthorized(self, message: str) -> Unauthorized:
        return Unauthorized(message, headers={"WWW-Authenticate": self.challenge})
