"""Refusals as RFC 9457 problem details, and the rate limit headers of every metered response.

Header syntax follows draft-ietf-httpapi-ratelimit-headers-10 (Structured Field lists, RFC
8941) plus the X-RateLimit-* trio GitHub and X send, so both new and old clients can read them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .plans import Window
from .store.base import Decision, Meter

PROBLEMS = "https://meterguard.dev/problems/"
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
UNAUTHENTICATED = PROBLEMS + "unauthenticated"
CUSTOMER_SUSPENDED = PROBLEMS + "customer-suspended"
ROUTE_NOT_IN_PLAN = PROBLEMS + "route-not-in-plan"
SPEND_CAP_REACHED = PROBLEMS + "spend-cap-reached"
STORE_UNAVAILABLE = PROBLEMS + "store-unavailable"
PLAN_UNAVAILABLE = PROBLEMS + "plan-unavailable"
INVALID_IDEMPOTENCY_KEY = PROBLEMS + "invalid-idempotency-key"
IDEMPOTENCY_KEY_REUSED = PROBLEMS + "idempotency-key-reused"
IDEMPOTENCY_KEY_IN_FLIGHT = PROBLEMS + "idempotency-key-in-flight"
REQUEST_TOO_LARGE = PROBLEMS + "request-too-large"
TOO_MANY_FAILED_AUTHENTICATIONS = PROBLEMS + "too-many-failed-authentications"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Headers = list[tuple[bytes, bytes]]


def retry_seconds(seconds: float) -> int:
    """Retry-After is whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds - 1e-9))


def problem(
    status: int,
    type_: str,
    detail: str,
    *,
    extra: Mapping[str, Any] | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> tuple[int, Headers, bytes]:
    body: dict[str, Any] = {"type": type_, "title": TITLES[status], "status": status, "detail": detail}
    if extra:
        body.update(extra)
    payload = json.dumps(body, separators=(",", ":")).encode()
    return (
        status,
        [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
            *headers,
        ],
        payload,
    )


def policy_header(windows: Sequence[Window], calls: Meter, records: Meter) -> bytes:
    """``RateLimit-Policy``: fixed per plan and route, so built once and cached by the caller."""
    items = [f'"{w.name}";q={w.limit};w={w.seconds}' for w in windows]
    if calls.included is not None:
        items.append(f'"calls-period";q={calls.included}')
    if records.included is not None:
        items.append(f'"records-period";q={records.included}')
    return ", ".join(items).encode()


class MeteredHeaders:
    """RateLimit, X-RateLimit-* and X-Meterguard-Usage of one (plan, route), for any decision.

    Built once per (plan, route) with everything that does not depend on the decision already
    encoded (the policy, the window names, the limits in requests, the cost), so that a request
    formats only its own numbers.

    ``RateLimit`` counts units (calls), as ``RateLimit-Policy`` does; its ``t`` is when a request
    of this route fits again. ``X-RateLimit-*`` count requests of this route: ``Limit`` and
    ``Remaining`` are units divided by the weight, rounded down, so that a client reading
    ``Remaining: 0`` knows its next request here is refused, and ``Reset`` is the same moment
    as ``t`` and ``Retry-After``. ``X-Meterguard-Cost`` says the weight where it is not 1.
    """

    __slots__ = ("_policy", "_windows", "_weight", "_calls", "_records", "_calls_usage", "_records_usage", "_cost")

    def __init__(self, windows: Sequence[Window], policy: bytes, calls: Meter, records: Meter, weight: int = 1) -> None:
        self._policy = (b"ratelimit-policy", policy) if policy else None
        self._weight = weight
        # (window, its RateLimit item's start, its X-RateLimit-Limit), in the order of a decision's states
        self._windows = tuple(
            (window, f'"{window.name}";r=', (b"x-ratelimit-limit", str(window.limit // weight).encode()))
            for window in windows
        )
        self._calls = calls.included
        self._records = records.included
        self._calls_usage = f";limit={calls.included}" if calls.included is not None else ""
        self._records_usage = f";limit={records.included}" if records.included is not None else ""
        self._cost = (b"x-meterguard-cost", str(weight).encode()) if weight != 1 else None

    def __call__(self, decision: Decision, period_end: int) -> Headers:
        weight = self._weight
        items = []
        tightest = None
        tightest_left = 0
        tightest_limit = None
        known = self._windows if len(self._windows) == len(decision.windows) else ()
        for index, state in enumerate(decision.windows):
            window = state.window
            if known and known[index][0] is window:
                _, name, limit = known[index]
            else:  # a decision on other windows than these terms': format it whole
                name, limit = f'"{window.name}";r=', (b"x-ratelimit-limit", str(window.limit // weight).encode())
            # t: retry_seconds(state.reset_after), inline (this runs for every window of every request)
            t = math.ceil(state.reset_after - 1e-9)
            items.append(f"{name}{state.remaining};t={t if t > 1 else 1}")
            left = state.remaining // weight
            if (
                tightest is None
                or left < tightest_left
                or (left == tightest_left and window.seconds < tightest.window.seconds)
            ):
                tightest, tightest_left, tightest_limit = state, left, limit
        calls_used, records_used = decision.calls_used, decision.records_used
        if self._calls is not None or self._records is not None:
            # retry_seconds, and max(0, ...) below, written out: a builtin's call costs more than the test
            to_period_end = math.ceil(period_end - decision.now - 1e-9)
            if to_period_end < 1:
                to_period_end = 1
            if self._calls is not None:
                quota_left = self._calls - calls_used
                items.append(f'"calls-period";r={quota_left if quota_left > 0 else 0};t={to_period_end}')
            if self._records is not None:
                quota_left = self._records - records_used
                items.append(f'"records-period";r={quota_left if quota_left > 0 else 0};t={to_period_end}')
        headers: Headers = []
        if self._policy is not None:
            headers.append(self._policy)
            headers.append((b"ratelimit", ", ".join(items).encode()))
        if tightest is not None and tightest_limit is not None:
            headers.append(tightest_limit)
            headers.append((b"x-ratelimit-remaining", str(tightest_left).encode()))
            # the moment t and Retry-After count to, rounded up to a whole second
            headers.append((b"x-ratelimit-reset", str(math.ceil(decision.now + tightest.reset_after)).encode()))
        usage = f"calls={calls_used}{self._calls_usage}, records={records_used}{self._records_usage}"
        headers.append((b"x-meterguard-usage", usage.encode()))
        if self._cost is not None:
            headers.append(self._cost)
        return headers


def throttled(retry_after: int) -> tuple[int, Headers, bytes]:
    """429 for an address past ``auth.failed_limit`` (CONTRACT 11); no credential was looked up."""
    return problem(
        429,
        TOO_MANY_FAILED_AUTHENTICATIONS,
        f"Too many failed authentications from this address; retry in {retry_after} s.",
        headers=[(b"retry-after", str(retry_after).encode())],
    )
