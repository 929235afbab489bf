"""The schema of plans.yaml as pydantic models, mirroring the YAML one to one.

Models validate types and ranges only; names one section uses from another, and anything that
needs more than one field, are checked when config.py builds the frozen objects.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

import limits
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from .plans import parse_match, window_name

HASHED_KEY = re.compile(r"sha256:[0-9a-f]{64}\Z")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
WEBHOOK_URL = re.compile(r"https?://[^\s/?#]+[^\s]*$")


def _money(value: object) -> object:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError('write money as a quoted decimal string, e.g. "5.00" (floats lose cents)')
    if isinstance(value, int | str):
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal amount") from None
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"{value!r} must be a finite amount >= 0")
        if amount.as_tuple().exponent < -6:  # type: ignore[operator]
            raise ValueError(f"{value!r} has more than 6 decimal places")
        return amount
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


class _Auth(_Model):
    api_key_header: str = Field(default="x-api-key", pattern=r"^[A-Za-z0-9-]+$")
    jwt: JWTSchema | None = None


class _Admin(_Model):
    path: str = Field(default="/_meterguard", pattern=r"^/[A-Za-z0-9_./-]*[A-Za-z0-9_-]$")
    token_env: str = "MG_ADMIN_TOKEN"


class _Records(_Model):
    header: str = Field(default="x-meterguard-records", pattern=r"^[A-Za-z0-9-]+$")
    json_field: str | None = "data"
    max_body_bytes: int = Field(default=1024 * 1024, ge=0, le=64 * 1024 * 1024)


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
    up_to: int | None = Field(ge=1)  # cumulative overage units; null on the last tier
    price: Money


class MeterPriceSchema(_Model):
    unit: int = Field(ge=1)
    price: Money | None = None  # flat: one price for every overage unit
    tiers: list[_Tier] | None = Field(default=None, min_length=1)  # graduated, Stripe-style


class _Overage(_Model):
    calls: MeterPriceSchema | None = None
    records: MeterPriceSchema | None = None
    spend_cap: Money | None = None


class _Quotas(_Model):
    calls: int | None = Field(default=None, ge=0)
    records: int | None = Field(default=None, ge=0)


def _rate_limits(value: object) -> object:
    if not isinstance(value, list):
        raise ValueError('must be a list of rate limit strings, e.g. ["1/second", "50/15 minutes"]')
    windows: list[tuple[int, int]] = []
    for text in value:
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a rate limit string")
        try:
            items = limits.parse_many(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a rate limit (expected e.g. '50/15 minutes')") from None
        for item in items:
            if item.amount < 1:
                raise ValueError(f"{text!r}: the amount must be at least 1")
            windows.append((int(item.amount), int(item.get_expiry())))
    seen: dict[int, int] = {}
    for _, seconds in windows:
        if seconds in seen:
            raise ValueError(f"two windows of the same length ({window_name(seconds)})")
        seen[seconds] = 1
    return windows


def _overage(value: object) -> object:
    # One branch, not a union: pydantic would report a failed mapping against both branches.
    if value == "block" or value is None:
        return None
    if isinstance(value, dict):
        return value
    raise ValueError("must be 'block' or a mapping of calls, records and spend_cap")


RateLimits = Annotated[list[tuple[int, int]], BeforeValidator(_rate_limits)]


class _Plan(_Model):
    price: Money = Decimal("0")
    rate_limits: RateLimits = []
    route_limits: dict[str, RateLimits] = {}
    quotas: _Quotas = _Quotas()
    overage: Annotated[_Overage | None, BeforeValidator(_overage)] = None  # None: block
    alerts: list[Annotated[float, Field(gt=0, le=10)]] = []
    strategy: Literal["sliding", "fixed"] = "sliding"

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
    store: str | None = None
    billing: _Billing = _Billing()
    auth: _Auth = _Auth()
    admin: _Admin = _Admin()
    records: _Records = _Records()
    consistency: Literal["exact", "fast"] = "exact"
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    webhooks: _Webhooks | None = None
    routes: list[_Route] = []
    plans: dict[str, _Plan] = Field(min_length=1)
    customers: dict[str, _Customer] = {}
