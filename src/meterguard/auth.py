"""Credentials -> Principal: format and checksum first (no I/O), then a local cache, then the store.

Header bytes are decoded as latin-1, never strict UTF-8 (RFC 9110 5.5): a ``\\xff`` in a key
is a 401, not a 500. Every failure looks the same to the client apart from its detail line,
and the key itself is never logged.

Against guessing and flooding (CONTRACT 11, docs/security.md): a credential larger than
``auth.max_credential_bytes`` is refused before anything reads it; a request with two different
credentials is refused rather than served as one of them; the caches are bounded in bytes as
well as entries; a key or token is never served from the cache past its expiry; and failed
authentications are counted per client address (_throttle.py). Past the limit, only credentials
this process has already seen succeed are looked at, so a blocked address costs no store lookup.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from ._throttle import FailedAuthThrottle
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
#: The cache holds credentials as its keys: up to max_credential_bytes each, so it is bounded in
#: bytes too. An entry costs its credential plus about ENTRY_OVERHEAD (slot, tuple, result).
CACHE_BYTES = 4 * 1024 * 1024
ENTRY_OVERHEAD = 200
KNOWN_GOOD_SIZE = 65_536  # digests of credentials that succeeded here: 16 bytes each, only real ones


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


@dataclass(frozen=True, slots=True)
class Throttled:
    """Too many failed authentications from the request's address; nothing was looked up."""

    retry_after: int  # whole seconds, at least 1


AMBIGUOUS = AuthFailure("Ambiguous credentials: the request carries two different credentials; send one.")
MALFORMED_KEY = AuthFailure("The API key is malformed (bad length, characters or checksum).")
NOT_A_KEY = AuthFailure("The credential is not a meterguard API key.")


class Authenticator:
    metrics: Metrics = DISCARD  # a MeterGuard gives it its own

    def __init__(
        self,
        config: Config,
        directory: Directory,
        *,
        monotonic: Clock = time.monotonic,
        clock: Clock = time.time,
    ) -> None:
        self._config = config
        self._directory = directory
        self._monotonic = monotonic
        self._clock = clock  # wall time, as the directory writes key expiries
        self._key_header = config.api_key_header.encode("latin-1")
        self._max_bytes = config.max_credential_bytes
        self._too_large = AuthFailure(f"The credential is larger than {self._max_bytes} bytes.")
        # credential -> (monotonic expiry, result, wall-clock end of the key or token or None)
        self._cache: OrderedDict[str, tuple[float, Principal | AuthFailure, float | None]] = OrderedDict()
        self._cache_bytes = 0
        self._good: OrderedDict[bytes, None] = OrderedDict()
        self._jwt = config.jwt
        self.throttle = FailedAuthThrottle(config.failed_limit, config.trusted_proxies)
        self.ttl = CACHE_TTL_SECONDS

    def credential(self, headers: Iterable[tuple[bytes, bytes]]) -> str | AuthFailure | None:
        """The API key or bearer token of a request; None when there is none; an AuthFailure when
        one is too large, or when there are two different ones (which one would the client mean?)."""
        found: str | None = None
        authorization: bytes | None = None
        key_header, limit = self._key_header, self._max_bytes
        for name, value in headers:  # every field, not the first match: a second credential matters
            if name == key_header:
                if len(value) > limit:  # before decoding or parsing anything
                    return self._too_large
                candidate = value.decode("latin-1").strip()
            elif name == b"authorization":
                if len(value) > limit + 16:  # room for "Bearer "
                    return self._too_large
                # Authorization is a singleton field (RFC 9110 11.6.2): two different ones are ambiguous.
                if authorization is not None and value.strip() != authorization:
                    return AMBIGUOUS
                authorization = value.strip()
                scheme, _, token = value.decode("latin-1").strip().partition(" ")
                if scheme.lower() != "bearer":
                    continue
                candidate = token.strip()
            else:
                continue
            if not candidate:
                continue
            if found is not None and candidate != found:
                return AMBIGUOUS  # the same credential twice is no ambiguity
            found = candidate
        return found

    async def check(self, scope: Any) -> Principal | AuthFailure | Throttled | None:
        """Authenticate an HTTP request: its Principal, why not (AuthFailure), Throttled, or None
        when it carries no credential at all (not counted as a failure: nothing was tried)."""
        credential = self.credential(scope["headers"])
        if credential is None:
            return None
        throttle = self.throttle
        address: str | None = None
        if throttle.blocked:  # only while some address is blocked: otherwise one dict truth test
            address = throttle.address(scope)
            wait = throttle.wait(address)
            if wait and not (isinstance(credential, str) and self._digest(credential) in self._good):
                return Throttled(wait)
        if isinstance(credential, AuthFailure):
            result: Principal | AuthFailure = credential
        else:
            # The cache first, here: a hit (nearly every request) costs no coroutine of its own.
            cached = self._cached(credential)
            result = cached if cached is not None else await self.authenticate(credential)
        if isinstance(result, AuthFailure):
            if throttle.enabled:
                throttle.failed(address if address is not None else throttle.address(scope))
            if isinstance(credential, str):
                self._good.pop(self._digest(credential), None)
        return result

    def adopt(self, previous: Authenticator) -> None:
        """After a reload: keep what belongs to the process, not to a version of plans.yaml."""
        self.ttl = previous.ttl
        self._good = previous._good
        if previous.throttle.same_settings(self.throttle):
            self.throttle = previous.throttle

    def invalidate(self) -> None:
        """Forget every cached lookup (after a local admin change)."""
        self._cache.clear()
        self._cache_bytes = 0

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
        for credential, entry in self._cache.items():
            if entry[0] > until:
                self._cache[credential] = (until, entry[1], entry[2])

    def _cached(self, credential: str) -> Principal | AuthFailure | None:
        entry = self._cache.get(credential)
        if entry is not None and entry[0] > self._monotonic() and (entry[2] is None or entry[2] > self._clock()):
            self.metrics.auth_hits += 1
            return entry[1]
        return None

    async def authenticate(self, credential: str) -> Principal | AuthFailure:
        cached = self._cached(credential)
        if cached is not None:
            return cached
        try:
            return await self._resolve(credential)
        except StoreError:
            # The store is away: a principal this process knew a moment ago stands in for it
            # (stale-if-error), so its usage is still counted under fail_open rather than served
            # anonymously; never past the key's or the token's own expiry.
            entry = self._cache.get(credential)
            if entry is not None and isinstance(entry[1], Principal) and (entry[2] is None or entry[2] > self._clock()):
                return entry[1]
            raise

    async def _resolve(self, credential: str) -> Principal | AuthFailure:
        now = self._monotonic()
        if len(credential) > self._max_bytes:
            return self._too_large
        if credential.startswith(PREFIX):
            if not is_well_formed(credential):
                return MALFORMED_KEY  # not cached
            result, left = await self._lookup_key(hash_key(credential))
            ttl = self.ttl
        elif self._jwt is not None and credential.count(".") == 2:
            result, left = await self._verify_jwt(credential, self._jwt)
            ttl = min(self.ttl, CACHE_TTL_SECONDS)  # a token's claims are not covered by change events
        else:
            return NOT_A_KEY
        # Never served from the cache past the key's or the token's expiry: the entry ends there on
        # both clocks (the wall clock is the one expiries are written in, and the one a test moves).
        until = None
        if left is not None:
            ttl = min(ttl, left)
            until = self._clock() + left
        if isinstance(result, Principal):
            self._remember(credential)
        self.metrics.auth_misses += 1
        self.metrics.store_call("auth_lookup", self._monotonic() - now)
        # Keyed by the credential itself: a hit costs one dict lookup, no checksum and no hash.
        self._store(credential, (now + ttl, result, until))
        return result

    def _store(self, credential: str, entry: tuple[float, Principal | AuthFailure, float | None]) -> None:
        if self._cache.pop(credential, None) is not None:
            self._cache_bytes -= len(credential) + ENTRY_OVERHEAD
        self._cache[credential] = entry
        self._cache_bytes += len(credential) + ENTRY_OVERHEAD
        while len(self._cache) > CACHE_SIZE or self._cache_bytes > CACHE_BYTES:
            evicted, _ = self._cache.popitem(last=False)
            self._cache_bytes -= len(evicted) + ENTRY_OVERHEAD

    @staticmethod
    def _digest(credential: str) -> bytes:
        return hashlib.blake2b(credential.encode("latin-1", "replace"), digest_size=16).digest()

    def _remember(self, credential: str) -> None:
        """Known good: it keeps working from an address that is blocked for failing (CONTRACT 11)."""
        digest = self._digest(credential)
        self._good.pop(digest, None)
        self._good[digest] = None
        if len(self._good) > KNOWN_GOOD_SIZE:
            self._good.popitem(last=False)

    async def _lookup_key(self, key_hash: str) -> tuple[Principal | AuthFailure, float | None]:
        record = await self._directory.find_key(key_hash)
        if record is None:
            return AuthFailure("The API key is unknown."), None
        if record.revoked:
            return AuthFailure("The API key has been revoked."), None
        left = None
        if record.expires_at is not None:
            left = record.expires_at - self._clock()
            if left <= 0:
                return AuthFailure("The API key has expired."), None
        return await self._principal(record.customer, record.key_id), left

    async def _verify_jwt(self, token: str, settings: JWTSettings) -> tuple[Principal | AuthFailure, float | None]:
        try:
            claims = jwt.decode(
                token,
                settings.verifier if settings.verifier is not None else settings.key,
                algorithms=list(settings.algorithms),  # an allow-list: never the token's own "alg"
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={
                    "require": ["exp"],
                    "verify_aud": settings.audience is not None,
                    "enforce_minimum_key_length": True,  # checked at load; never a warning per request
                },
            )
        except jwt.ExpiredSignatureError:
            return AuthFailure("The token has expired."), None
        except jwt.InvalidTokenError as exc:
            return AuthFailure(f"The token is invalid: {exc}."), None
        except Exception as exc:
            # Whatever else PyJWT raises (InvalidKeyError for a key that does not fit the token's
            # algorithm, AttributeError for a private key): a refusal, not a 500. Config load
            # refuses such keys; this is the belt to those braces, for hand-built configs.
            log.warning("token refused: %s while verifying it", type(exc).__name__, exc_info=True)
            return AuthFailure("The token is invalid."), None
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
            return AuthFailure("The token has no usable exp claim."), None
        customer = claims.get(settings.customer_claim)
        if not isinstance(customer, str) or not customer:
            return AuthFailure(f"The token has no {settings.customer_claim!r} claim naming a customer."), None
        key_id = "jwt"
        if isinstance(claims.get("azp"), str):
            key_id = "jwt:" + claims["azp"][:64]
        # PyJWT refuses from exp + leeway on (its clock: the wall clock); so does the cache.
        return await self._principal(customer, key_id), exp + settings.leeway - time.time()

    async def _principal(self, customer: str, key_id: str) -> Principal | AuthFailure:
        record = await self._directory.get(customer)
        if record is None:
            return AuthFailure("The credential belongs to no known customer.")
        cap = None if record.spend_cap is None else to_cents(record.spend_cap)
        return Principal(customer, key_id, record.plan, record.status == "suspended", record.anchor_day, cap)
