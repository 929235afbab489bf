"""The refusals the middleware answers itself, as problem details (responses.problem).

Each returns ``(status, headers, body)``; ``MeterGuard._refuse`` sends it.
"""

from __future__ import annotations

from typing import Any

from .auth import Principal
from .meter import Terms, Ticket
from .periods import rfc3339
from .responses import (
    IDEMPOTENCY_KEY_IN_FLIGHT,
    IDEMPOTENCY_KEY_REUSED,
    QUOTA_EXCEEDED,
    SPEND_CAP_REACHED,
    STORE_UNAVAILABLE,
    UNAUTHENTICATED,
    Headers,
    problem,
    retry_seconds,
)
from .store.base import Decision

STORE_RETRY_AFTER = 5
_WWW_AUTHENTICATE = b'Bearer realm="meterguard"'

Refusal = tuple[int, Headers, bytes]


def idempotency_refusal(state: str) -> Refusal:
    if state == "mismatch":
        return problem(422, IDEMPOTENCY_KEY_REUSED, "This Idempotency-Key was used with another request.")
    return problem(
        409,
        IDEMPOTENCY_KEY_IN_FLIGHT,
        "The first request with this Idempotency-Key is still running; retry once it has finished.",
        headers=[(b"retry-after", b"1")],
    )


def unauthenticated(detail: str, *, invalid: bool = False) -> Refusal:
    challenge = _WWW_AUTHENTICATE + (b', error="invalid_token"' if invalid else b"")
    return problem(401, UNAUTHENTICATED, detail, headers=[(b"www-authenticate", challenge)])


def store_unavailable() -> Refusal:
    return problem(
        503,
        STORE_UNAVAILABLE,
        "The metering store is unavailable; please retry.",
        headers=[(b"retry-after", str(STORE_RETRY_AFTER).encode())],
    )


def refusal(decision: Decision, principal: Principal, terms: Terms, ticket: Ticket, metered: Headers) -> Refusal:
    """429 for a full rate window or a used-up quota, 402 at the spend cap."""
    retry = [(b"retry-after", str(retry_seconds(decision.retry_after)).encode())]
    if decision.reason == "spend_cap":
        return problem(
            402,
            SPEND_CAP_REACHED,
            f"Overage spend has reached the spend cap of plan {principal.plan!r} for this period.",
            extra={"plan": principal.plan, "resets_at": rfc3339(ticket.period.end)},
            headers=metered + retry,
        )
    extra: dict[str, Any] = {"violated-policies": list(decision.violated), "plan": principal.plan}
    if decision.reason == "rate_limited":
        extra["scope"] = "window"
        detail = f"Rate limit {', '.join(decision.violated)} of plan {principal.plan!r} is full."
    else:
        extra["scope"] = "period"
        if decision.violated[0] == "calls-period":
            limit, used = terms.calls.included, decision.calls_used
        else:
            limit, used = terms.records.included, decision.records_used
        resets_at = rfc3339(ticket.period.end)
        extra.update(limit=limit, used=used, resets_at=resets_at)
        detail = f"The {decision.violated[0]} quota of plan {principal.plan!r} is used up until {resets_at}."
    return problem(429, QUOTA_EXCEEDED, detail, extra=extra, headers=metered + retry)
