"""The schema of plans.yaml as pydantic models, mirroring the YAML one to one.

Models validate types and ranges only; names one section uses from another, and anything that
needs more than one field, are checked when config.py builds the frozen objects.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from typing import Annotated, Literal
from urllib.parse import urlsplit

import limits
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from .billing import decimal_amount
from .errors import ConfigError
from .plans import parse_match, window_name
from .store import SCHEMES, split_prefix

HASHED_KEY = re.compile(r"sha256:[0-9a-f]{64}\Z")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
WEBHOOK_URL = re.compile(r"https?://[^\s/?#]+[^\s]*$")
#: Counts live in Redis (Lua numbers are doubles) and in JSON read by clients in any language:
#: integers beyond 2^53 are not exact there. The largest quota, price unit or window amount.
MAX_COUNT = 2**53 - 1
MAX_RATE_LIMIT_CHARS = 256  # "1/second;50/15 minutes" is 22; limits' parser is quadratic in runs of spaces
MAX_WINDOW_SECONDS = 366 * 86_400  # longer rate windows are quotas; write them as quotas
MAX_TRUSTED_PROXIES = 256


def _money(value: object) -> object:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError('write money as a quoted decimal string, e.g. "5.00" (floats lose cents)')
    if isinstance(value, int | str):
        return decimal_amount(str(value), 6)
    raise ValueError("must be a decimal string")


Money = Annotated[Decimal, BeforeValidator(_money)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Billing(_Model):
    anchor: Literal["calendar", "anniversary"] = "calendar"


class JWTSchema(_Model):
    algorithms: list[str] = Field(min_length=1)
    key_env: str | None = None
    key_file: str | None = None
    issuer: str | None = None
    audience: str | None = None
    customer_claim: str = "sub"
    leeway: int = Field(default=0, ge=0, le=300)

    @field_validator("algorithms")
    @classmethod
    def _no_none(cls, value: list[str]) -> list[str]:
        bad = [alg for alg in value if alg.lower() == "none" or alg not in _JWT_ALGORITHMS]
        if bad:
            raise ValueError(f"unsupported algorithm(s) {bad}; allowed: {sorted(_JWT_ALGORITHMS)}")
        return value


_JWT_ALGORITHMS = frozenset(
    {
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
    }
)


def _failed_limit(value: object) -> object:
    if value is None:
        return None  # the throttle is off
    if not isinstance(value, str):
        raise ValueError('must be one rate limit string, e.g. "60/minute", or null to turn the throttle off')
    windows = _rate_limits([value])
    if not isinstance(windows, list) or len(windows) != 1:
        raise ValueError(f"{value!r}: give one window, e.g. '60/minute'")
    return value


def _trusted_proxies(value: object) -> object:
    if not isinstance(value, list):
        raise ValueError('must be a list of addresses or CIDRs, e.g. ["10.0.0.0/8", "192.0.2.7"]')
    if len(value) > MAX_TRUSTED_PROXIES:
        raise ValueError(f"at most {MAX_TRUSTED_PROXIES} entries")
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(item, strict=False) if isinstance(item, str) else None)
        except ValueError:
            networks.append(None)
        if networks[-1] is None:
            raise ValueError(f"{item!r} is not an IP address or CIDR (e.g. 10.0.0.0/8)")
    return tuple(networks)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Auth(_Model):
    api_key_header: str = Field(default="x-api-key", pattern=r"^[A-Za-z0-9-]+$")
    jwt: JWTSchema | None = None
    #: Failed authentications per client address, in `limits` syntax; None: no throttle.
    failed_limit: Annotated[str | None, BeforeValidator(_failed_limit)] = "60/minute"
    trusted_proxies: Annotated[tuple[Network, ...], BeforeValidator(_trusted_proxies)] = ()
    max_credential_bytes: int = Field(default=4096, ge=256, le=65536)


class _Admin(_Model):
    path: str = Field(default="/_meterguard", pattern=r"^/[A-Za-z0-9_./-]*[A-Za-z0-9_-]$")
    token_env: str = "MG_ADMIN_TOKEN"


class _Records(_Model):
    header: str = Field(default="x-meterguard-records", pattern=r"^[A-Za-z0-9-]+$")
    json_field: str | None = "data"
    #: JSON bodies up to this size are read whole and counted with one C parse (msgspec); larger
    #: ones are counted as they stream past, unbuffered (records.py).
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=0, le=256 * 1024 * 1024)


class _Spool(_Model):
    path: str | None = None
    max_events: int = Field(default=100_000, ge=1, le=100_000_000)


class _Events(_Model):
    max_len: int = Field(default=1_000_000, ge=0, le=1_000_000_000)  # 0: unbounded
    keep_exported_seconds: int = Field(default=86_400, ge=0, le=400 * 86_400)


class _Webhooks(_Model):
    url: str | None = Field(default=None, pattern=WEBHOOK_URL.pattern)
    url_env: str | None = None
    secret_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)


class _Route(_Model):
    match: str
    weight: int = Field(default=1, ge=1, le=1_000_000)
    plans: list[str] | None = None
    public: bool = False

    @field_validator("match")
    @classmethod
    def _match(cls, value: str) -> str:
        parse_match(value)
        return value


class _Tier(_Model):
    up_to: int | None = Field(ge=1, le=MAX_COUNT)  # cumulative overage units; null on the last tier
    price: Money


class MeterPriceSchema(_Model):
    unit: int = Field(ge=1, le=MAX_COUNT)
    price: Money | None = None  # flat: one price for every overage unit
    tiers: list[_Tier] | None = Field(default=None, min_length=1)  # graduated, Stripe-style


class _Overage(_Model):
    calls: MeterPriceSchema | None = None
    records: MeterPriceSchema | None = None
    spend_cap: Money | None = None


class _Quotas(_Model):
    calls: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    records: int | None = Field(default=None, ge=0, le=MAX_COUNT)


def _rate_limits(value: object) -> object:
    if not isinstance(value, list):
        raise ValueError('must be a list of rate limit strings, e.g. ["1/second", "50/15 minutes"]')
    windows: list[tuple[int, int]] = []
    for text in value:
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a rate limit string")
        if len(text) > MAX_RATE_LIMIT_CHARS:
            # limits' own pattern backtracks: 200,000 spaces inside one string took minutes
            raise ValueError(f"a rate limit string is at most {MAX_RATE_LIMIT_CHARS} characters")
        try:
            items = limits.parse_many(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a rate limit (expected e.g. '50/15 minutes')") from None
        # limits reads "10/0 seconds" as 10 per second (a multiple of 0 becomes 1): refuse it here.
        if _ZERO_LENGTH.search(text):
            raise ValueError(f"{text!r}: a window cannot be 0 long")
        for item in items:
            if item.amount < 1:
                raise ValueError(f"{text!r}: the amount must be at least 1")
            if item.amount > MAX_COUNT:
                raise ValueError(f"{text!r}: the amount must be at most {MAX_COUNT} (2^53 - 1)")
            if item.get_expiry() > MAX_WINDOW_SECONDS:
                raise ValueError(f"{text!r}: a window is at most a year long; write longer limits as quotas")
            windows.append((int(item.amount), int(item.get_expiry())))
    seen: dict[int, int] = {}
    for _, seconds in windows:
        if seconds in seen:
            raise ValueError(f"two windows of the same length ({window_name(seconds)})")
        seen[seconds] = 1
    return windows


#: "/ 0 seconds", "per 00 minutes": a multiple of zero in front of a granularity.
_ZERO_LENGTH = re.compile(r"(/|\bper\b)\s*0+\s*[a-z]", re.IGNORECASE)


def _store_url(value: object) -> object:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a store URL, e.g. redis://127.0.0.1:6379/0")
    reason = _store_url_problem(value)
    if reason is not None:
        raise ValueError(reason)
    return value


def _store_url_problem(url: str) -> str | None:
    """What is wrong with a store URL, checked without connecting; None when nothing is."""
    try:
        parts = urlsplit(url)
        port = parts.port if parts.scheme in ("redis", "rediss") else None
    except ValueError as exc:  # a port that is no number, a bad [IPv6] literal
        return f"not a valid store URL: {exc}"
    if parts.scheme not in SCHEMES:
        return f"unknown store URL scheme {parts.scheme!r}; use one of {', '.join(s + '://' for s in SCHEMES)}"
    if parts.scheme in ("redis", "rediss"):
        database = parts.path.strip("/")
        if not parts.hostname:
            return f"{parts.scheme}:// needs a host, e.g. {parts.scheme}://127.0.0.1:6379/0"
        if port == 0:
            return "the port must be 1-65535"
        if database and not (database.isascii() and database.isdigit()):
            return f"the database must be a number, not {database!r}"
    elif parts.scheme == "redis+cluster":
        for node in parts.netloc.rpartition("@")[2].split(","):
            host, _, port_text = node.strip().rpartition(":") if ":" in node else (node.strip(), "", "6379")
            if not host or not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
                return f"cluster nodes are host[:port], not {node.strip()!r}"
    try:
        split_prefix(url)
    except ConfigError as exc:
        return exc.issues[0].reason
    return None


def _overage(value: object) -> object:
    # One branch, not a union: pydantic would report a failed mapping against both branches.
    if value == "block" or value is None:
        return None
    if isinstance(value, dict):
        return value
    raise ValueError("must be 'block' or a mapping of calls, records and spend_cap")


RateLimits = Annotated[list[tuple[int, int]], BeforeValidator(_rate_limits)]

_STATUS_CLASS = re.compile(r"([1-5])xx\Z", re.IGNORECASE)
_STATUS_RANGE = re.compile(r"([1-5][0-9][0-9])\s*-\s*([1-5][0-9][0-9])\Z")
_STATUS_HINT = 'write a class ("2xx"), a status (404) or a range ("400-403")'


def _statuses(value: object) -> object:
    """``billable_status``: classes, statuses and ranges -> the set of statuses, 100-599."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of statuses: {_STATUS_HINT}")
    statuses: set[int] = set()
    for item in value:
        text = str(item).strip() if isinstance(item, int | str) and not isinstance(item, bool) else ""
        if found := _STATUS_CLASS.match(text):
            low = int(found[1]) * 100
            statuses.update(range(low, low + 100))
        elif found := _STATUS_RANGE.match(text):
            low, high = int(found[1]), int(found[2])
            if low > high:
                raise ValueError(f"{item!r}: the range runs backwards")
            statuses.update(range(low, high + 1))
        elif text.isascii() and text.isdigit() and 100 <= int(text) <= 599:
            statuses.add(int(text))
        else:
            raise ValueError(f"{item!r} is not a status: {_STATUS_HINT}")
    return frozenset(statuses)


class _Plan(_Model):
    price: Money = Decimal("0")
    rate_limits: RateLimits = []
    route_limits: dict[str, RateLimits] = {}
    quotas: _Quotas = _Quotas()
    overage: Annotated[_Overage | None, BeforeValidator(_overage)] = None  # None: block
    alerts: list[Annotated[float, Field(gt=0, le=10)]] = []
    strategy: Literal["sliding", "fixed"] = "sliding"
    #: Response statuses billed; None: plans.DEFAULT_BILLABLE (everything but 5xx).
    billable_status: Annotated[frozenset[int] | None, BeforeValidator(_statuses)] = None

    @field_validator("alerts", mode="before")
    @classmethod
    def _alerts(cls, value: object) -> object:
        # YAML reads 1.0 as a float and 1 as an int; both are fine here.
        if isinstance(value, list):
            return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value


class _Customer(_Model):
    plan: str
    keys: list[str] = []
    status: Literal["active", "suspended"] = "active"
    anchor_day: int | None = Field(default=None, ge=1, le=31)

    @field_validator("keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if not HASHED_KEY.match(key):
                raise ValueError(
                    "keys are stored hashed: write 'sha256:<64 lowercase hex>' (see `meterguard keys hash`)"
                )
        return value


class FileSchema(_Model):
    version: Literal[1]
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    store: Annotated[str | None, BeforeValidator(_store_url)] = None
    billing: _Billing = _Billing()
    auth: _Auth = _Auth()
    admin: _Admin = _Admin()
    records: _Records = _Records()
    consistency: Literal["exact", "fast"] = "exact"
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    webhooks: _Webhooks | None = None
    spool: _Spool = _Spool()
    events: _Events = _Events()
    #: The wrapped app's API documentation (FastAPI's /docs, /docs/oauth2-redirect, /redoc and
    #: /openapi.json) is public: no key, not metered.
    public_docs: bool = False
    routes: list[_Route] = []
    plans: dict[str, _Plan] = Field(min_length=1)
    customers: dict[str, _Customer] = {}
