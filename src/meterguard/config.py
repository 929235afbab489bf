"""Load and validate plans.yaml into frozen objects.

Every problem is reported as ``FILE:LINE: dotted.field.path: reason`` (lines from 1, as
editors count). The work is split by job: _config_yaml.py reads the file and its YAML (with
the line of every key), _config_schema.py holds the pydantic models of the YAML,
_config_settings.py the frozen objects everything else reads (imported from here),
_config_jwt.py loads the JWT key, and this module checks what spans sections and builds the
frozen objects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from ._config_jwt import load_jwt
from ._config_schema import NAME, FileSchema, MeterPriceSchema
from ._config_settings import Config, JWTSettings, LedgerSettings, StaticCustomer, WebhookSettings
from ._config_yaml import MAX_FILE_BYTES, Loc, dotted, line_of, read_file, read_yaml
from .errors import ConfigError, ConfigIssue
from .plans import (
    DEFAULT_BILLABLE,
    MeterPrice,
    Overage,
    Plan,
    Quotas,
    Route,
    RouteTable,
    Tier,
    Window,
    parse_match,
    window_name,
)

__all__ = [
    "MAX_FILE_BYTES",
    "PUBLIC_DOCS_PATHS",
    "Config",
    "JWTSettings",
    "LedgerSettings",
    "StaticCustomer",
    "WebhookSettings",
    "load_config",
    "parse_config",
]


#: What ``public_docs: true`` opens: FastAPI's defaults (docs_url, its OAuth2 redirect, redoc_url,
#: openapi_url). An app that moves them lists its own paths as public routes instead.
PUBLIC_DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a plans file; raises ConfigError listing every problem found.

    Schema problems (types, ranges, unknown fields) are all reported together; references
    between sections (a customer's plan, a route's plans) are checked once the schema holds.
    """
    return parse_config(read_file(path), source=str(path))


def parse_config(text: str, *, source: str = "<config>") -> Config:
    data, lines = read_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, 1, "", "the top level must be a mapping (version, plans, ...)")])
    issues = _references(data, lines, source)
    try:
        model = FileSchema.model_validate(data)
    except ValidationError as exc:
        issues += [
            ConfigIssue(source, line_of(_clean(err["loc"]), lines), dotted(_clean(err["loc"])), _reason(err))
            for err in exc.errors(include_url=False)
        ]
        raise ConfigError(sorted(issues, key=lambda issue: issue.line or 0)) from None
    return _build(model, lines, source, issues)


def _references(data: dict[Any, Any], lines: Mapping[Loc, int], source: str) -> list[ConfigIssue]:
    """Names one section uses from another (plans, routes), checked on the raw data so that they
    are reported together with any schema problem rather than after it is fixed."""
    issues: list[ConfigIssue] = []
    plans: dict[Any, Any] = data["plans"] if isinstance(data.get("plans"), dict) else {}
    routes: list[Any] = data["routes"] if isinstance(data.get("routes"), list) else []
    customers: dict[Any, Any] = data["customers"] if isinstance(data.get("customers"), dict) else {}

    def problem(loc: Loc, reason: str) -> None:
        issues.append(ConfigIssue(source, line_of(loc, lines), dotted(loc), reason))

    matches: set[object] = set()
    first: dict[tuple[str, str], int] = {}
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        matches.add(route.get("match"))
        try:
            method, path = parse_match(route["match"])
        except (KeyError, TypeError, AttributeError, ValueError):
            pass  # the schema names what is wrong with it
        else:
            if (method, path) in first:
                # The first match wins: a second row for the same METHOD /path would never apply.
                earlier = first[(method, path)]
                problem(
                    ("routes", index, "match"),
                    f"duplicate route: routes.{earlier} (line {line_of(('routes', earlier), lines)}) already "
                    f"matches {method} {path}, and the first match wins",
                )
            first.setdefault((method, path), index)
        for plan_name in route.get("plans") or () if isinstance(route.get("plans"), list) else ():
            if isinstance(plan_name, str) and plan_name not in plans:
                problem(("routes", index, "plans"), f"unknown plan {plan_name!r}")
    for name, plan in plans.items():
        route_limits = plan.get("route_limits") if isinstance(plan, dict) else None
        for match in route_limits if isinstance(route_limits, dict) else ():
            if match not in matches:
                problem(("plans", name, "route_limits", match), "not the match string of any route in routes")
    for cid, customer in customers.items():
        plan_name = customer.get("plan") if isinstance(customer, dict) else None
        if isinstance(plan_name, str) and plan_name not in plans:
            problem(("customers", cid, "plan"), f"unknown plan {plan_name!r}")
    return issues


def _clean(loc: tuple[str | int, ...]) -> Loc:
    # pydantic adds union branch names ("_Overage", "literal['block']") to locations; drop them.
    return tuple(part for part in loc if not (isinstance(part, str) and (part.startswith(("_", "literal[")))))


def _reason(err: Mapping[str, Any]) -> str:
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def _build(model: FileSchema, lines: Mapping[Loc, int], source: str, issues: list[ConfigIssue]) -> Config:

    def problem(loc: Loc, reason: str) -> None:
        issues.append(ConfigIssue(source, line_of(loc, lines), dotted(loc), reason))

    routes: list[Route] = []
    if model.public_docs:
        # First in the table: the first match wins, and docs are what the switch promises public.
        routes += [Route(match=f"GET {path}", public=True) for path in PUBLIC_DOCS_PATHS]
    matches: set[str] = set()
    for index, raw in enumerate(model.routes):
        if raw.public and raw.plans is not None:
            problem(("routes", index, "public"), "a public route cannot be limited to plans")
        matches.add(raw.match)
        routes.append(
            Route(
                match=raw.match,
                weight=raw.weight,
                public=raw.public,
                plans=frozenset(raw.plans) if raw.plans is not None else None,
            )
        )

    plans: dict[str, Plan] = {}
    for name, raw_plan in model.plans.items():
        if not NAME.match(name):
            problem(("plans", name), "plan names are 1-64 letters, digits, '_', '-' or '.'")
        route_windows: dict[str, tuple[Window, ...]] = {}
        for match, windows in raw_plan.route_limits.items():
            route_windows[match] = tuple(
                Window(f"route-{window_name(s)}", n, s, counter=f"route-{window_name(s)} {match}") for n, s in windows
            )
        overage: Overage | None = None
        if raw_plan.overage is not None:
            terms = raw_plan.overage
            if terms.calls is None and terms.records is None:
                problem(("plans", name, "overage"), "price at least one of calls or records, or write 'block'")
            for meter in ("calls", "records"):
                if getattr(terms, meter) is not None and getattr(raw_plan.quotas, meter) is None:
                    problem(("plans", name, "overage", meter), f"overage priced but quotas.{meter} is not set")
            overage = Overage(
                calls=_meter_price(terms.calls, ("plans", name, "overage", "calls"), problem),
                records=_meter_price(terms.records, ("plans", name, "overage", "records"), problem),
                spend_cap=terms.spend_cap,
            )
        plans[name] = Plan(
            name=name,
            price=raw_plan.price,
            windows=tuple(Window(window_name(s), n, s) for n, s in raw_plan.rate_limits),
            route_windows=MappingProxyType(route_windows),
            quotas=Quotas(calls=raw_plan.quotas.calls, records=raw_plan.quotas.records),
            overage=overage,
            alerts=tuple(sorted(set(raw_plan.alerts))),
            strategy=raw_plan.strategy,
            billable=raw_plan.billable_status if raw_plan.billable_status is not None else DEFAULT_BILLABLE,
        )

    customers: dict[str, StaticCustomer] = {}
    owners: dict[str, str] = {}
    for cid, raw_customer in model.customers.items():
        if not NAME.match(cid):
            problem(("customers", cid), "customer ids are 1-64 letters, digits, '_', '-' or '.'")
        for index, key in enumerate(raw_customer.keys):
            if key in owners:
                problem(("customers", cid, "keys", index), f"this key already belongs to {owners[key]!r}")
            owners[key] = cid
        customers[cid] = StaticCustomer(
            id=cid,
            plan=raw_customer.plan,
            keys=tuple(raw_customer.keys),
            status=raw_customer.status,
            anchor_day=raw_customer.anchor_day,
        )

    webhooks = None
    if model.webhooks is not None:
        raw_hooks = model.webhooks
        if (raw_hooks.url is None) == (raw_hooks.url_env is None):
            problem(("webhooks",), "set exactly one of url or url_env")
        webhooks = WebhookSettings(raw_hooks.url, raw_hooks.url_env, raw_hooks.secret_env, raw_hooks.timeout_seconds)

    jwt_settings = None
    if model.auth.jwt is not None:
        jwt_settings = load_jwt(model.auth.jwt, problem)

    if issues:
        raise ConfigError(sorted(issues, key=lambda issue: issue.line or 0))
    return Config(
        plans=MappingProxyType(plans),
        routes=RouteTable(tuple(routes)),
        customers=MappingProxyType(customers),
        version=model.version,
        currency=model.currency,
        store=model.store,
        anchor=model.billing.anchor,
        api_key_header=model.auth.api_key_header.lower(),
        jwt=jwt_settings,
        failed_limit=model.auth.failed_limit,
        trusted_proxies=model.auth.trusted_proxies,
        max_credential_bytes=model.auth.max_credential_bytes,
        admin_path=model.admin.path,
        admin_token_env=model.admin.token_env,
        records_header=model.records.header.lower(),
        records_json_field=model.records.json_field,
        records_max_body_bytes=model.records.max_body_bytes,
        consistency=model.consistency,
        on_store_error=model.on_store_error,
        webhooks=webhooks,
        ledger=LedgerSettings(
            model.spool.path, model.spool.max_events, model.events.max_len, model.events.keep_exported_seconds
        ),
        source=source,
    )


def _meter_price(raw: MeterPriceSchema | None, loc: Loc, problem: Any) -> MeterPrice | None:
    if raw is None:
        return None
    if (raw.price is None) == (raw.tiers is None):
        problem(loc, "give either price (one price per unit) or tiers (graduated), not both or neither")
        return None
    if raw.tiers is None:
        assert raw.price is not None
        return MeterPrice(raw.unit, raw.price)
    last = len(raw.tiers) - 1
    previous = 0
    for index, tier in enumerate(raw.tiers):
        where = (*loc, "tiers", index, "up_to")
        if tier.up_to is None:
            if index != last:
                problem(where, "only the last tier may be open-ended (up_to: null)")
        elif index == last:
            problem(where, "the last tier must be open-ended: up_to: null")
        elif tier.up_to <= previous:
            problem(where, f"up_to must be greater than the previous tier's ({previous})")
        else:
            previous = tier.up_to
    return MeterPrice(raw.unit, tiers=tuple(Tier(tier.up_to, tier.price) for tier in raw.tiers))
