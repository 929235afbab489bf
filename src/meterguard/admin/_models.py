"""The admin API's bodies and documents as pydantic models: one source for validation, responses and OpenAPI.

Request bodies are validated by these models; every JSON response is passed through its model on
the way out (:func:`shape`), and the OpenAPI document (``_openapi.py``) is generated from them, so
the three cannot drift apart: a field added to a document and not here fails the response, and
the schemathesis run in ``make test`` fails with it. Document models forbid unknown fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic_core import ErrorDetails

from .._timespec import parse_duration, parse_instant
from ..customers import MAX_GRACE_SECONDS
from ..store.base import KeyState
from ._documents import CUSTOMER_ID

Money = str  # a decimal string with two decimals (more for unit prices), CONTRACT 5
Timestamp = str  # RFC 3339, UTC
# What billing.parse_amount takes (below 10^9, two decimals), for the document only: the handler
# refuses with parse_amount's own reasons ("1e30 is not a plain decimal amount"), not a pattern's.
_MONEY = r"^[0-9]{1,9}(\.[0-9]{1,2})?$"
#: Durations the document promises (each at most MAX_GRACE_SECONDS). Sums such as "1w2d" are taken
#: too, but a pattern cannot bound a sum, and what it admits must be accepted (schemathesis checks).
GRACE_PATTERN = r"^(0|[0-9]{1,6}s|[0-9]{1,5}m|[0-9]{1,3}h|([0-8]?[0-9]|90)d|(0?[0-9]|1[0-2])w)$"
DEFAULT_GRACE = "24h"  # how long a rotated-out key keeps working when the request names no grace


def _integral(value: object) -> object:
    # JSON Schema's integer includes 1.0; a bool is never one (strict mode refuses it as it should).
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _instant(value: str | None) -> str | None:
    if value is not None:
        parse_instant(value)  # its ValueError says what is wrong; the handler reads the time again
    return value


def _grace(value: str) -> str:
    if parse_duration(value) > MAX_GRACE_SECONDS:
        raise ValueError(f"the grace period is at most {MAX_GRACE_SECONDS // 86_400} days")
    return value


#: An RFC 3339 time with its offset. Its documented pattern names future years only, and is made
#: when the document is served (_openapi.py): "in the future" is no pattern of its own.
Instant = Annotated[str | None, AfterValidator(_instant)]


class _Body(BaseModel):
    # strict: a JSON true is not an anchor day, 3 is not a plan name
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- request bodies ---------------------------------------------------------------------------------


class CustomerCreate(_Body):
    """``POST /customers``."""

    # Anchored both ends: pydantic's pattern is a search, not a match.
    id: str = Field(
        pattern="^" + CUSTOMER_ID.pattern.removesuffix(r"\Z") + "$", description="1-64 of A-Z a-z 0-9 _ - ."
    )
    plan: str = Field(description="The name of a plan in plans.yaml.")
    anchor_day: Annotated[int | None, BeforeValidator(_integral)] = Field(
        default=None, ge=1, le=31, description="Billing day under an anniversary anchor."
    )


class CustomerUpdate(_Body):
    """``PATCH /customers/{id}``: at least one field."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})
    # Not nullable (a null plan or status is refused), yet optional: the default is not validated.
    plan: str = Field(default=None, description="The name of a plan in plans.yaml.")  # type: ignore[assignment]
    status: Literal["active", "suspended"] = Field(default=None)  # type: ignore[arg-type]
    spend_cap: Annotated[str, WithJsonSchema({"type": "string", "pattern": _MONEY})] | None = Field(
        default=None, description="The customer's own overage cap, e.g. \"1000.00\"; null: the plan's."
    )


class KeyCreate(_Body):
    """``POST /customers/{id}/keys``: the body is optional."""

    expires_at: Instant = Field(
        default=None,
        description="When the key stops working: RFC 3339 with an offset, in the future, within 100 years.",
    )

    @property
    def expires(self) -> float | None:
        return None if self.expires_at is None else parse_instant(self.expires_at)


class KeyRotate(KeyCreate):
    """``POST /keys/{key_id}/rotate``: the body is optional."""

    grace: Annotated[str, AfterValidator(_grace), WithJsonSchema({"type": "string", "pattern": GRACE_PATTERN})] = Field(
        default=DEFAULT_GRACE,
        description='How long the old key keeps working: "0", or a duration such as 90m, 24h, 7d or 1w2d; at most 90d.',
    )

    @property
    def grace_seconds(self) -> int:
        return parse_duration(self.grace)


# --- documents ----------------------------------------------------------------------------------------


class Health(_Document):
    status: Literal["ok", "degraded"]
    store: str


class ProblemError(_Document):
    field: str
    reason: str


class Problem(BaseModel):
    """RFC 9457 problem details; extension members vary by type."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | None = None


class PlanChange(_Document):
    plan: str
    since: Timestamp | None


class Customer(_Document):
    id: str
    plan: str
    status: Literal["active", "suspended"]
    anchor_day: int
    created: Timestamp | None
    spend_cap: Money | None
    plan_history: list[PlanChange]


class CustomerList(_Document):
    customers: list[Customer]


class Key(_Document):
    key_id: str
    customer: str
    prefix: str
    created: Timestamp | None
    last_used: Timestamp | None
    expires_at: Timestamp | None = Field(description="From then on the key is refused; null: never.")
    state: KeyState = Field(description="expiring: its expiry is within 7 days.")
    replaced_by: str | None = Field(description="The key a rotation issued in its place.")
    revoked: bool


class KeyList(_Document):
    keys: list[Key]


class KeyCreated(Key):
    key: str = Field(description="The key itself: shown this once, stored only as SHA-256.")


class KeyRotated(KeyCreated):
    replaces: Key = Field(description="The old key, with the expiry the rotation gave it.")


class PeriodSpan(_Document):
    start: Timestamp
    end: Timestamp


class MeterUsage(_Document):
    used: int
    included: int | None
    remaining: int | None
    overage: int


class Charges(_Document):
    currency: str
    base: Money
    overage: Money
    total: Money
    spend_cap: Money | None


class Rejected(_Document):
    rate_limited: int
    quota: int
    spend_cap: int


class Counts(_Document):
    calls: int
    records: int


class UsageDocument(_Document):
    customer: str
    plan: str
    period: PeriodSpan
    calls: MeterUsage
    records: MeterUsage
    charges: Charges
    rejected: Rejected
    replays: int = Field(description="Idempotent repeats served again from the stored response, not billed.")
    unmetered: int = Field(
        description="Requests served while the store was away whose usage could not be kept (docs/reliability.md)."
    )
    uncounted: int = Field(description="Responses whose records could not be counted (docs/http.md).")
    by_route: dict[str, Counts]
    by_key: dict[str, Counts]


class Day(_Document):
    day: str
    calls: int
    records: int
    by_route: dict[str, Counts]
    by_key: dict[str, Counts]


class DailyDocument(_Document):
    customer: str
    days: list[Day]


class StatementPeriod(_Document):
    id: str
    start: Timestamp
    end: Timestamp


class StatementLine(_Document):
    meter: str
    tier: int
    up_to: int | None
    included: int | None
    used: int
    units: int
    unit: int
    price: Money
    amount: Money


class Statement(_Document):
    customer: str
    plan: str
    period: StatementPeriod
    currency: str
    base: Money
    lines: list[StatementLine]
    overage: Money
    total: Money
    spend_cap: Money | None


class WindowDoc(_Document):
    name: str
    limit: int
    seconds: int


class TierDoc(_Document):
    up_to: int | None
    price: Money


class MeterPriceDoc(_Document):
    unit: int
    price: Money | None = None
    tiers: list[TierDoc] | None = None


class OverageDoc(_Document):
    calls: MeterPriceDoc | None
    records: MeterPriceDoc | None
    spend_cap: Money | None


class QuotasDoc(_Document):
    calls: int | None
    records: int | None


class PlanDoc(_Document):
    price: Money | None
    rate_limits: list[WindowDoc]
    route_limits: dict[str, list[WindowDoc]]
    quotas: QuotasDoc
    overage: Literal["block"] | OverageDoc
    alerts: list[float]
    strategy: Literal["sliding", "fixed"]


class BillingDoc(_Document):
    anchor: Literal["calendar", "anniversary"]


class RouteDoc(_Document):
    match: str
    weight: int
    plans: list[str] | None
    public: bool


class PlansDocument(_Document):
    currency: str
    billing: BillingDoc
    plans: dict[str, PlanDoc]
    routes: list[RouteDoc]


class ReloadSummary(_Document):
    status: Literal["reloaded"]
    source: str
    plans: list[str]
    added: list[str]
    removed: list[str]
    changed: list[str]
    routes: int
    customers: int
    restart_required: list[str] = Field(description="Changed settings kept until the process restarts.")
    notified: bool = Field(description="Whether the other processes on the store were told to reload.")


def shape(model: type[BaseModel], document: Any) -> Any:
    """``document`` as ``model`` says it is: validated, then dumped back to JSON types."""
    return model.model_validate(document).model_dump(mode="json", exclude_unset=True)


def errors_of(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as the admin API's ``errors`` member: ``{"field", "reason"}``."""
    return [
        {"field": ".".join(str(part) for part in error["loc"]), "reason": _reason(error)}
        for error in exc.errors(include_url=False)
    ]


def _reason(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "value_error":  # our validators' own words, without pydantic's "Value error, "
        return str(error.get("ctx", {}).get("error", error["msg"]))
    return str(error["msg"])
