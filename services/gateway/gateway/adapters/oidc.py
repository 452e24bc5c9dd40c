"""OAuth2 / OIDC bearer JWTs, checked with PyJWT against the issuer's published keys (JWKS).

The JWKS is found by OIDC discovery (`{issuer}/.well-known/openid-configuration`) unless its URL
is configured, fetched with PyJWKClient and cached for `oidc_jwks_cache_seconds`: within that a token is
checked without leaving the event loop; the (blocking) fetch runs in a thread. A key the issuer no
longer publishes is refused once the cache expires; a new key id is fetched at once (at most
every REFETCH_SECONDS).
Signature, `exp`, `nbf`, `iss` and `aud` are checked; the scopes come from `scope` (a
space-separated string) or `scp` (a list or a string); scopes unknown here are ignored.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import jwt

from fhirschema_bus.settings import AuthSettings
from gateway.errors import BusUnavailable
from gateway.service.auth import SCOPES, Principal, TokenError

# A token naming a key id not in the cached JWKS fetches it again (a new key after a rotation),
# but not more often than this: random key ids must not turn every request into a fetch.
REFETCH_SECONDS = 10.0


class OidcVerifier:
    def __init__(self, settings: AuthSettings) -> None:
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.algorithms = settings.algorithm_list()
        self.lifespan = settings.oidc_jwks_cache_seconds
        self.leeway = settings.oidc_leeway_seconds
        self._jwks_url = settings.oidc_jwks_url
        self._client: jwt.PyJWKClient | None = None
        self._keys: dict[str, jwt.PyJWK] = {}  # kid -> key, as the issuer published them
        self._fetched = -float("inf")  # when (monotonic)
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as e:
            raise TokenError("the bearer token is not a JWT") from e
        if header.get("alg") not in self.algorithms:
            raise TokenError(f"the token's algorithm {header.get('alg')!r} is not accepted")
        key = await self._key(str(header.get("kid") or ""))
        try:
            claims = jwt.decode(
                token, key, algorithms=self.algorithms, audience=self.audience, issuer=self.issuer,
                leeway=self.leeway, options={"require": ["exp", "iss", "aud"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError as e:
            raise TokenError("the token has expired") from e
        except jwt.InvalidAudienceError as e:
            raise TokenError(
                f"the token is not for this service (audience {self.audience!r} expected)"
            ) from e
        except jwt.InvalidIssuerError as e:
            raise TokenError(f"the token is not from the issuer {self.issuer!r}") from e
        except jwt.InvalidSignatureError as e:
            raise TokenError("the token's signature does not verify") from e
        except jwt.PyJWTError as e:
            raise TokenError(f"the token is not valid: {e}") from e
        name = claims.get("client_id") or claims.get("azp") or claims.get("sub") or "token"
        return Principal(str(name), scopes_of(claims), "bearer")

    async def _key(self, kid: str) -> Any:
        keys = self._keys
        if time.monotonic() - self._fetched >= self.lifespan or (
            kid not in keys and time.monotonic() - self._fetched >= REFETCH_SECONDS
        ):
            async with self._lock:  # one fetch at a time; the others use what it found
                if self._keys is keys:
                    self._keys = await asyncio.to_thread(self._fetch)
                    self._fetched = time.monotonic()
                keys = self._keys
        if not kid and len(keys) == 1:  # no kid in the token: the issuer's only signing key
            return next(iter(keys.values())).key
        if kid not in keys:
            raise TokenError("the token is signed with a key the issuer does not publish (revoked?)")
        return keys[kid].key

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        """The issuer's signing keys by key id (blocking: runs in a thread)."""
        try:
            if self._client is None:
                url = self._jwks_url or _discover(self.issuer)
                self._client = jwt.PyJWKClient(url, cache_jwk_set=False, cache_keys=False, timeout=5)
            return {str(k.key_id or ""): k for k in self._client.get_signing_keys()}
        except jwt.PyJWKClientConnectionError as e:
            raise BusUnavailable(
                f"the token issuer's keys cannot be fetched ({e}); retry later", headers={"Retry-After": "5"}
            ) from e
        except jwt.PyJWKClientError as e:  # a JWKS without usable signing keys
            raise BusUnavailable(f"the token issuer publishes no usable keys: {e}") from e


def _discover(issuer: str) -> str:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(json.load(r)["jwks_uri"])
    except (OSError, ValueError, KeyError) as e:
        raise jwt.PyJWKClientConnectionError(f"OIDC discovery at {url} failed: {e}") from e


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scp", ""))
    items = raw.split() if isinstance(raw, str) else [str(x) for x in raw] if isinstance(raw, list) else []
    return frozenset(sc for sc in items if sc in SCOPES)
