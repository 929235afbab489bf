"""Every admin operation, once: the router is built from this table and so is the OpenAPI document."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from . import _models as m
from ._documents import MAX_DAYS, PERIOD_PATTERN

Auth = Literal["admin", "none", "customer"]
#: A response: a model (JSON), a media type (text, html), or None (no body).
Answer = type[BaseModel] | str | None


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    pattern: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    kind: Literal["string", "integer"] = "string"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: str  # the AdminApp method
    summary: str
    responses: Mapping[int, Answer]
    body: type[BaseModel] | None = None
    body_required: bool = True  # False: no body (or an empty one) means every field's default
    query: tuple[Param, ...] = ()
    auth: Auth = "admin"
    tags: tuple[str, ...] = field(default=())


_PERIOD = Param("period", "YYYY-MM; the current period when omitted.", pattern=PERIOD_PATTERN)
_DAYS = Param("days", "How many days, ending today (UTC).", minimum=1, maximum=MAX_DAYS, kind="integer")

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/health", "health", "Store health", {200: m.Health, 503: m.Health}, auth="none",
              tags=("operators",)),
    Operation("GET", "/plans", "plans", "The loaded plans", {200: m.PlansDocument}, tags=("operators",)),
    Operation("POST", "/customers", "create_customer", "Create a customer",
              {201: m.Customer, 400: m.Problem, 409: m.Problem, 413: m.Problem, 422: m.Problem},
              body=m.CustomerCreate, tags=("customers",)),
    Operation("GET", "/customers", "list_customers", "List customers", {200: m.CustomerList}, tags=("customers",)),
    Operation("GET", "/customers/{customer}", "get_customer", "One customer", {200: m.Customer, 404: m.Problem},
              tags=("customers",)),
    Operation("PATCH", "/customers/{customer}", "update_customer", "Change plan, status or spend cap",
              {200: m.Customer, 400: m.Problem, 404: m.Problem, 413: m.Problem, 422: m.Problem},
              body=m.CustomerUpdate, tags=("customers",)),
    Operation("POST", "/customers/{customer}/keys", "create_key", "Issue a key (shown once)",
              {201: m.KeyCreated, 400: m.Problem, 404: m.Problem, 413: m.Problem, 422: m.Problem},
              body=m.KeyCreate, body_required=False, tags=("keys",)),
    Operation("GET", "/customers/{customer}/keys", "list_keys", "A customer's keys (never the key itself)",
              {200: m.KeyList, 404: m.Problem}, tags=("keys",)),
    Operation("DELETE", "/keys/{key_id}", "revoke_key", "Revoke a key everywhere within 1 s",
              {204: None, 404: m.Problem}, tags=("keys",)),
    Operation("POST", "/keys/{key_id}/rotate", "rotate_key",
              "Rotate a key: a new one (shown once) works at once, the old one until the grace ends",
              {201: m.KeyRotated, 400: m.Problem, 404: m.Problem, 409: m.Problem, 413: m.Problem, 422: m.Problem},
              body=m.KeyRotate, body_required=False, tags=("keys",)),
    Operation("GET", "/customers/{customer}/usage", "usage", "Usage of a period",
              {200: m.UsageDocument, 400: m.Problem, 404: m.Problem, 422: m.Problem}, query=(_PERIOD,),
              tags=("usage",)),
    Operation("GET", "/customers/{customer}/usage/daily", "daily", "Usage per day, per route and per key",
              {200: m.DailyDocument, 400: m.Problem, 404: m.Problem}, query=(_DAYS,), tags=("usage",)),
    Operation("GET", "/customers/{customer}/statement", "statement", "Statement of a period",
              {200: m.Statement, 400: m.Problem, 404: m.Problem, 422: m.Problem}, query=(_PERIOD,),
              tags=("usage",)),
    Operation("GET", "/me/usage", "me_usage", "The caller's own usage (customer API key)",
              {200: m.UsageDocument, 400: m.Problem, 403: m.Problem, 404: m.Problem, 422: m.Problem},
              query=(_PERIOD,), auth="customer", tags=("usage",)),
    Operation("GET", "/metrics", "metrics_text", "Prometheus metrics", {200: "text/plain"}, tags=("operators",)),
    Operation("POST", "/reload", "reload", "Reread plans.yaml and swap it in everywhere",
              {200: m.ReloadSummary, 409: m.Problem, 422: m.Problem}, tags=("operators",)),
    Operation("GET", "/openapi.json", "openapi", "This document", {200: "application/json"}, tags=("operators",)),
    Operation("GET", "/dashboard", "static", "The dashboard page (asks for the token)", {200: "text/html"},
              auth="none", tags=("operators",)),
    Operation("GET", "/dashboard.js", "static", "The dashboard's script", {200: "text/javascript"}, auth="none",
              tags=("operators",)),
    Operation("GET", "/dashboard.css", "static", "The dashboard's style", {200: "text/css"}, auth="none",
              tags=("operators",)),
)  # fmt: skip

PUBLIC_PATHS = frozenset(op.path for op in OPERATIONS if op.auth != "admin")
