"""Load and validate plans.yaml into frozen objects.

Every problem is reported as ``FILE:LINE: dotted.field.path: reason`` (lines from 1, as
editors count). The YAML is read with the safe loader only, capped in size, and aliases are
refused: a billing file has no use for them and they are the door to "billion laughs".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import limits
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, ConfigIssue
from .plans import (
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

MAX_FILE_BYTES = 1024 * 1024
_HASHED_KEY = re.compile(r"sha256:[0-9a-f]{64}\Z")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


# --------------------------------------------------------------------------------------------
# Frozen result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaticCustomer:
    id: str
    plan: str
    keys: tuple[str, ...] = ()
    status: Literal["active", "suspended"] = "active"
    anchor_day: int | None = None


@dataclass(frozen=True, slots=True)
class JWTSettings:
    """Signed JWTs accepted as credentials (RFC 8725: algorithms allow-listed, exp required)."""

    algorithms: tuple[str, ...]
    key: str = field(repr=False)
    issuer: str | None = None
    audience: str | None = None
    customer_claim: str = "sub"
    leeway: int = 0


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Where alerts are POSTed. The URL and secret may come from the environment; the secret
    is read only when a deliverer starts, so commands that send nothing do not need it."""

    url: str | None
    url_env: str | None
    secret_env: str
    timeout_seconds: float = 5.0

    def resolve(self, environ: Mapping[str, str] | None = None) -> tuple[str, bytes]:
        """``(url, secret)``; raises ConfigError naming the variable that is unset or invalid."""
        env = os.environ if environ is None else environ
        issues: list[ConfigIssue] = []
        url = self.url
        if url is None and self.url_env is not None:
            url = env.get(self.url_env) or None
            if url is None:
                issues.append(
                    ConfigIssue("webhooks", None, "url_env", f"environment variable {self.url_env} is not set")
                )
            elif not _WEBHOOK_URL.match(url):
                issues.append(ConfigIssue("webhooks", None, "url_env", f"{self.url_env} is not an http(s) URL"))
        secret = env.get(self.secret_env, "")
        if not secret:
            issues.append(
                ConfigIssue("webhooks", None, "secret_env", f"environment variable {self.secret_env} is not set")
            )
        if issues:
            raise ConfigError(issues)
        assert url is not None
        return url, secret.encode("utf-8")


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """Where usage waits while the store is away (``spool``) and how much of the event stream
    each customer keeps (``events``). docs/reliability.md says what each bound means."""

    spool_path: str | None = None  # a directory; None: the ledger lives in memory only
    spool_max_events: int = 100_000  # usage entries (customer, period, day) held; past it: "unmetered"
    events_max_len: int = 1_000_000  # usage events per customer stream (approximate trim)
    events_keep_exported_seconds: int = 86_400  # exported events stay this long (new export groups, replays)


@dataclass(frozen=True, slots=True)
class Config:
    plans: Mapping[str, Plan]
    routes: RouteTable
    customers: Mapping[str, StaticCustomer] = field(default_factory=dict)
    version: int = 1
    currency: str = "USD"
    store: str | None = None
    anchor: Literal["calendar", "anniversary"] = "calendar"
    api_key_header: str = "x-api-key"
    jwt: JWTSettings | None = None
    admin_path: str = "/_meterguard"
    admin_token_env: str = "MG_ADMIN_TOKEN"
    records_header: str = "x-meterguard-records"
    records_json_field: str | None = "data"
    records_max_body_bytes: int = 1024 * 1024
    consistency: Literal["exact", "fast"] = "exact"
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    webhooks: WebhookSettings | None = None
    ledger: LedgerSettings = LedgerSettings()
    source: str = "<config>"


# --------------------------------------------------------------------------------------------
# Schema (pydantic), mirroring the YAML one to one
# --------------------------------------------------------------------------------------------


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


class _JWT(_Model):
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
    jwt: _JWT | None = None


class _Admin(_Model):
    path: str = Field(default="/_meterguard", pattern=r"^/[A-Za-z0-9_./-]*[A-Za-z0-9_-]$")
    token_env: str = "MG_ADMIN_TOKEN"


class _Records(_Model):
    header: str = Field(default="x-meterguard-records", pattern=r"^[A-Za-z0-9-]+$")
    json_field: str | None = "data"
    max_body_bytes: int = Field(default=1024 * 1024, ge=0, le=64 * 1024 * 1024)


class _Spool(_Model):
    path: str | None = None
    max_events: int = Field(default=100_000, ge=1, le=100_000_000)


class _Events(_Model):
    max_len: int = Field(default=1_000_000, ge=0, le=1_000_000_000)  # 0: unbounded
    keep_exported_seconds: int = Field(default=86_400, ge=0, le=400 * 86_400)


_WEBHOOK_URL = re.compile(r"https?://[^\s/?#]+[^\s]*$")


class _Webhooks(_Model):
    url: str | None = Field(default=None, pattern=_WEBHOOK_URL.pattern)
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


class _MeterPrice(_Model):
    unit: int = Field(ge=1)
    price: Money | None = None  # flat: one price for every overage unit
    tiers: list[_Tier] | None = Field(default=None, min_length=1)  # graduated, Stripe-style


class _Overage(_Model):
    calls: _MeterPrice | None = None
    records: _MeterPrice | None = None
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
            if not _HASHED_KEY.match(key):
                raise ValueError(
                    "keys are stored hashed: write 'sha256:<64 lowercase hex>' (see `meterguard keys hash`)"
                )
        return value


class _File(_Model):
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
    spool: _Spool = _Spool()
    events: _Events = _Events()
    routes: list[_Route] = []
    plans: dict[str, _Plan] = Field(min_length=1)
    customers: dict[str, _Customer] = {}


# --------------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


def _read_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML safely, returning the data and the line (from 1) of every mapping key and item."""
    lines: dict[Loc, int] = {}
    issues: list[ConfigIssue] = []
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark is not None else None
                issues.append(ConfigIssue(source, line, "", "YAML aliases are not allowed"))
        if issues:
            raise ConfigError(issues)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ConfigError([ConfigIssue(source, 1, "", "the file is empty")])
            _walk(node, (), lines, issues, source)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue(source, line, "", f"invalid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(source, None, "", f"invalid YAML: {exc}")]) from None
    if issues:
        raise ConfigError(issues)
    return data, lines


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], issues: list[ConfigIssue], source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*loc, key)
            if key in seen:
                issues.append(ConfigIssue(source, key_node.start_mark.line + 1, _dotted(child), "duplicate key"))
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines, issues, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _walk(item, (*loc, index), lines, issues, source)


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def _line_of(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1 if lines else None


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a plans file; raises ConfigError listing every problem found.

    Schema problems (types, ranges, unknown fields) are all reported together; references
    between sections (a customer's plan, a route's plans) are checked once the schema holds.
    """
    source = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([ConfigIssue(source, None, "", f"cannot read the file: {exc.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([ConfigIssue(source, None, "", f"the file is larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(source, line, "", "the file is not UTF-8")]) from None
    return parse_config(text, source=source)


def parse_config(text: str, *, source: str = "<config>") -> Config:
    data, lines = _read_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, 1, "", "the top level must be a mapping (version, plans, ...)")])
    issues = _references(data, lines, source)
    try:
        model = _File.model_validate(data)
    except ValidationError as exc:
        issues += [
            ConfigIssue(source, _line_of(_clean(err["loc"]), lines), _dotted(_clean(err["loc"])), _reason(err))
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
        issues.append(ConfigIssue(source, _line_of(loc, lines), _dotted(loc), reason))

    matches: set[object] = set()
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        matches.add(route.get("match"))
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


def _build(model: _File, lines: Mapping[Loc, int], source: str, issues: list[ConfigIssue]) -> Config:

    def problem(loc: Loc, reason: str) -> None:
        issues.append(ConfigIssue(source, _line_of(loc, lines), _dotted(loc), reason))

    routes: list[Route] = []
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
        if not _NAME.match(name):
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
        )

    customers: dict[str, StaticCustomer] = {}
    owners: dict[str, str] = {}
    for cid, raw_customer in model.customers.items():
        if not _NAME.match(cid):
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
        jwt_settings = _jwt(model.auth.jwt, problem)

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


def _meter_price(raw: _MeterPrice | None, loc: Loc, problem: Any) -> MeterPrice | None:
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


def _jwt(raw: _JWT, problem: Any) -> JWTSettings | None:
    if (raw.key_env is None) == (raw.key_file is None):
        problem(("auth", "jwt"), "set exactly one of key_env (secret or PEM in a variable) or key_file (PEM)")
        return None
    if raw.key_env is not None:
        key = os.environ.get(raw.key_env)
        if not key:
            problem(("auth", "jwt", "key_env"), f"environment variable {raw.key_env} is not set")
            return None
    else:
        assert raw.key_file is not None
        try:
            key = Path(raw.key_file).read_text()
        except OSError as exc:
            problem(("auth", "jwt", "key_file"), f"cannot read {raw.key_file}: {exc.strerror}")
            return None
    return JWTSettings(
        algorithms=tuple(raw.algorithms),
        key=key,
        issuer=raw.issuer,
        audience=raw.audience,
        customer_claim=raw.customer_claim,
        leeway=raw.leeway,
    )
