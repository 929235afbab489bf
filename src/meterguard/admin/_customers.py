"""Customers and keys: ``/customers[/{customer}]``, ``/customers/{customer}/keys``, ``/keys/{key_id}[/rotate]``."""

from __future__ import annotations

from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from ..billing import parse_amount
from ..customers import KEEP, Keep
from ._base import AdminBase, document, parse_body
from ._documents import customer_json, key_json
from ._models import (
    Customer,
    CustomerCreate,
    CustomerList,
    CustomerUpdate,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyRotate,
    KeyRotated,
)
from ._problems import invalid


class CustomerEndpoints(AdminBase):
    async def create_customer(self, request: Request) -> Response:
        body = await parse_body(request, CustomerCreate)
        if isinstance(body, Response):
            return body
        record = await self.directory.create(body.id, body.plan, body.anchor_day)
        location = request.scope.get("root_path", "") + f"/customers/{body.id}"
        return document(Customer, customer_json(record), 201, headers={"Location": location})

    async def list_customers(self, request: Request) -> Response:
        records = await self.directory.all()
        return document(CustomerList, {"customers": [customer_json(record) for record in records]})

    async def get_customer(self, request: Request) -> Response:
        record = await self.directory.require(request.path_params["customer"])
        return document(Customer, customer_json(record))

    async def update_customer(self, request: Request) -> Response:
        body = await parse_body(request, CustomerUpdate)
        if isinstance(body, Response):
            return body
        given = body.model_fields_set
        if not given & {"plan", "status", "spend_cap"} or ("plan" in given and body.plan is None):
            reason = "give at least one of plan, status, spend_cap" if not given else "a plan name, not null"
            return invalid("The change is not valid.", [{"field": "" if not given else "plan", "reason": reason}])
        if "status" in given and body.status is None:
            return invalid("The change is not valid.", [{"field": "status", "reason": "one of active, suspended"}])
        # null puts the customer back on the plan's cap; a number is refused: money is a string.
        spend_cap: Decimal | None | Keep = KEEP
        if "spend_cap" in given:
            try:
                spend_cap = None if body.spend_cap is None else parse_amount(body.spend_cap)
            except ValueError as exc:
                return invalid("The change is not valid.", [{"field": "spend_cap", "reason": str(exc)}])
        record = await self.directory.update(
            request.path_params["customer"], plan=body.plan, status=body.status, spend_cap=spend_cap
        )
        # Other processes see the change when their 1-second cache entries lapse; this one at once.
        self.authenticator.invalidate()
        return document(Customer, customer_json(record))

    async def create_key(self, request: Request) -> Response:
        body = await parse_body(request, KeyCreate, optional=True)
        if isinstance(body, Response):
            return body
        try:
            record, key = await self.directory.issue_key(request.path_params["customer"], body.expires)
        except ValueError as exc:  # an expiry in the past, or more than 100 years away
            return invalid(f"The key request is not valid: {exc}.", [{"field": "expires_at", "reason": str(exc)}])
        return document(KeyCreated, {"key": key, **key_json(record, self.clock())}, 201)

    async def rotate_key(self, request: Request) -> Response:
        body = await parse_body(request, KeyRotate, optional=True)
        if isinstance(body, Response):
            return body
        try:
            record, key, old = await self.directory.rotate_key(
                request.path_params["key_id"], body.grace_seconds, body.expires
            )
        except ValueError as exc:
            return invalid(f"The rotation is not valid: {exc}.")
        # Other processes refuse the old key at its expiry whatever they cached; this one drops it now.
        self.authenticator.invalidate()
        now = self.clock()
        return document(KeyRotated, {"key": key, **key_json(record, now), "replaces": key_json(old, now)}, 201)

    async def list_keys(self, request: Request) -> Response:
        records = await self.directory.list_keys(request.path_params["customer"])
        now = self.clock()
        return document(KeyList, {"keys": [key_json(record, now) for record in records]})

    async def revoke_key(self, request: Request) -> Response:
        await self.directory.revoke_key(request.path_params["key_id"])
        self.authenticator.invalidate()
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
