"""Usage, daily usage and statements: ``/customers/{customer}/usage[/daily]``, ``/statement``, ``/me/usage``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..auth import AuthFailure, Throttled
from ._base import AdminBase, document
from ._documents import MAX_DAYS, customer_daily, customer_statement, customer_usage
from ._models import DailyDocument, Statement, UsageDocument
from ._problems import invalid, problem, throttled

ADMIN_CHALLENGE = 'Bearer realm="meterguard-admin"'
CUSTOMER_CHALLENGE = 'Bearer realm="meterguard"'


def unauthenticated(detail: str, challenge: str) -> Response:
    return problem("unauthenticated", "Unauthorized", 401, detail, headers={"WWW-Authenticate": challenge})


def _bad_period(exc: ValueError) -> Response:
    return invalid(str(exc), [{"field": "period", "reason": "YYYY-MM"}], 400)


class UsageEndpoints(AdminBase):
    async def usage(self, request: Request) -> Response:
        record = await self.directory.require(request.path_params["customer"])
        try:
            usage = await customer_usage(
                self.config, self.store, record, request.query_params.get("period"), self.clock()
            )
        except ValueError as exc:
            return _bad_period(exc)
        return document(UsageDocument, usage)

    async def daily(self, request: Request) -> Response:
        record = await self.directory.require(request.path_params["customer"])
        text = request.query_params.get("days", "30")
        # The length first: int() refuses more than 4,300 digits with a ValueError (a 500, once).
        if not (len(text) <= 3 and text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_DAYS):
            return invalid(
                f"days must be an integer from 1 to {MAX_DAYS}, not {text!r}.",
                [{"field": "days", "reason": f"1..{MAX_DAYS}"}],
                400,
            )
        return document(DailyDocument, await customer_daily(self.store, record.id, int(text), self.clock()))

    async def statement(self, request: Request) -> Response:
        record = await self.directory.require(request.path_params["customer"])
        try:
            statement = await customer_statement(
                self.config, self.store, record, request.query_params.get("period"), self.clock()
            )
        except ValueError as exc:
            return _bad_period(exc)
        return document(Statement, statement)

    async def me_usage(self, request: Request) -> Response:
        # The same answers the gateway gives the same key (CONTRACT 6), so a client sees one behaviour.
        principal = await self.authenticator.check(request.scope)
        if principal is None:
            return unauthenticated(
                f"Send your API key in the {self.config.api_key_header} header or as a bearer token.",
                CUSTOMER_CHALLENGE,
            )
        if isinstance(principal, Throttled):
            return throttled(principal.retry_after)
        if isinstance(principal, AuthFailure):
            return unauthenticated(principal.detail, CUSTOMER_CHALLENGE + ', error="invalid_token"')
        if principal.suspended:
            return problem("customer-suspended", "Forbidden", 403, f"Customer {principal.customer!r} is suspended.")
        if principal.plan not in self.config.plans:
            return problem("plan-unavailable", "Forbidden", 403, f"Plan {principal.plan!r} is not available.")
        record = await self.directory.require(principal.customer)
        try:
            usage = await customer_usage(
                self.config, self.store, record, request.query_params.get("period"), self.clock()
            )
        except ValueError as exc:
            return _bad_period(exc)
        return document(UsageDocument, usage)
