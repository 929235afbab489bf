"""Credentials -> Principal: format and checksum first (no I/O), then a local cache, then the store.

Header bytes are decoded as latin-1, never strict UTF-8 (RFC 9110 5.5): a ``\\xff`` in a key
is a 401, not a 500. Every failure looks the same to the client apart from its detail line,
and the key itself is never logged.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from ._types import Clock
from .billing import to_cents
from .config import Config, JWTSettings
from .customers import Directory
from .errors import StoreError
from .keys import PREFIX, hash_key, is_well_formed
from .metrics import DISCARD, Metrics

log = logging.getLogger("meterguard.auth")

CACHE_TTL_SECONDS = 1.0  # a revoked key or suspended customer is refused everywhere within this
CACHE_TTL_SUBSCRIBED = 30.0  # ... and while change events arrive, they drop the cache at once
CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    customer: str
    key_id: str
    plan: str
    suspended: bool
    anchor_day: int
    spend_cap_cents: int | None = None  # the customer's own cap; None: the plan's


@dataclass(frozen=True, slots=True)
class AuthFailure:
    detail: str


class Authenticator:
    metrics: Metrics = DISCARD  # a MeterGuard gives it its own

    def __init__(self, config: Config, directory: Directory, *, monotonic: Clock = time.monotonic) -> None:
        self._config = config
        self._directory = directory
        self._monotonic = monotonic
        self._key_header = config.api_key_header.encode("latin-1")
        self._cache: OrderedDict[str, tuple[float, Principal | AuthFailure]] = OrderedDict()
        self._jwt = config.jwt
        self.ttl = CACHE_TTL_SECONDS

    def credential(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The API key or bearer token of a request, or None when there is none."""
        bearer = None
        for name, value in headers:
            if name == self._key_header:
                return value.decode("latin-1").strip()
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").strip().partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    bearer = token.strip()
        return bearer

    def invalidate(self) -> None:
        """Forget every cached lookup (after a local admin change)."""
        self._cache.clear()

    def follow(self, subscribed: bool) -> None:
        """Whether change events reach this process: then lookups may be cached longer.

        While the store's change events arrive, a revocation or customer change drops the cache at
        once, so entries can live CACHE_TTL_SUBSCRIBED; without them, CACHE_TTL_SECONDS is the
        bound on how long a revoked key is still served. A new subscription expires every entry
        (changes may have been missed); a lost one lets them expire within CACHE_TTL_SECONDS.
        Expired entries are kept: they stand in while the store is away (authenticate()).
        """
        self.ttl = CACHE_TTL_SUBSCRIBED if subscribed else CACHE_TTL_SECONDS
        # (Re)subscribed: every entry is looked up again at its next use. Lost: within a second.
        until = self._monotonic() + (0.0 if subscribed else CACHE_TTL_SECONDS)
        for credential, (expires, result) in self._cache.items():
            if expires > until:
                self._cache[credential] = (until, result)

    async def authenticate(self, credential: str) -> Principal | AuthFailure:
        now = self._monotonic()
        entry = self._cache.get(credential)
        if entry is not None and entry[0] > now:
            self.metrics.auth_hits += 1
            return entry[1]
        try:
            return await self._resolve(credential, now)
        except StoreError:
            # The store is away: a principal this process knew a moment ago stands in for it
            # (stale-if-error), so its usage is still counted (fail_open) rather than anonymous.
            if entry is not None and isinstance(entry[1], Principal):
                return entry[1]
            raise

    async def _resolve(self, credential: str, now: float) -> Principal | AuthFailure:
        if credential.startswith(PREFIX):
            if not is_well_formed(credential):
                return AuthFailure("The API key is malformed (bad length, characters or checksum).")  # not cached
            result = await self._lookup_key(hash_key(credential))
            expires = now + self.ttl
        elif self._jwt is not None and credential.count(".") == 2:
            result = await self._verify_jwt(credential, self._jwt)
            # A verified token is trusted no longer than a second: it may expire any moment.
            expires = now + min(self.ttl, CACHE_TTL_SECONDS)
        else:
            return AuthFailure("The credential is not a meterguard API key.")
        self.metrics.auth_misses += 1
        self.metrics.store_call("auth_lookup", self._monotonic() - now)
        # Keyed by the credential itself: a hit costs one dict lookup, no checksum and no hash.
        self._cache[credential] = (expires, result)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result

    async def _lookup_key(self, key_hash: str) -> Principal | AuthFailure:
        record = await self._directory.find_key(key_hash)
        if record is None:
            return AuthFailure("The API key is unknown.")
        if record.revoked:
            return AuthFailure("The API key has been revoked.")
        return await self._principal(record.customer, record.key_id)

    async def _verify_jwt(self, token: str, settings: JWTSettings) -> Principal | AuthFailure:
        try:
            claims = jwt.decode(
                token,
                settings.key,
                algorithms=list(settings.algorithms),  # an allow-list: never the token's own "alg"
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={"require": ["exp"], "verify_aud": settings.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            return AuthFailure("The token has expired.")
        except jwt.InvalidTokenError as exc:
            return AuthFailure(f"The token is invalid: {exc}.")
        customer = claims.get(settings.customer_claim)
        if not isinstance(customer, str) or not customer:
            return AuthFailure(f"The token has no {settings.customer_claim!r} claim naming a customer.")
        key_id = "jwt"
        if isinstance(claims.get("azp"), str):
            key_id = "jwt:" + claims["azp"][:64]
        return await self._principal(customer, key_id)

    async def _principal(self, customer: str, key_id: str) -> Principal | AuthFailure:
        record = await self._directory.get(customer)
        if record is None:
            return AuthFailure("The credential belongs to no known customer.")
        cap = None if record.spend_cap is None else to_cents(record.spend_cap)
        return Principal(customer, key_id, record.plan, record.status == "suspended", record.anchor_day, cap)
