"""Load and validate plans.yaml into frozen objects.

Every problem is reported as ``FILE:LINE: dotted.field.path: reason`` (lines from 1, as
editors count). The work is split by job: _config_yaml.py reads the file and its YAML (with
the line of every key), _config_schema.py holds the pydantic models of the YAML, and this
module checks what spans sections and builds the frozen objects everything else reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import jwt
from pydantic import ValidationError

from ._config_schema import NAME, WEBHOOK_URL, FileSchema, JWTSchema, MeterPriceSchema, Network
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
    "StaticCustomer",
    "WebhookSettings",
    "load_config",
    "parse_config",
]


#: What ``public_docs: true`` opens: FastAPI's defaults (docs_url, its OAuth2 redirect, redoc_url,
#: openapi_url). An app that moves them lists its own paths as public routes instead.
PUBLIC_DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")

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
    #: The key loaded by PyJWT (a public key object, or the secret's bytes): parsed once, at load.
    verifier: Any = field(default=None, repr=False, compare=False)


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
            elif not WEBHOOK_URL.match(url):
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
    failed_limit: str | None = "60/minute"  # failed authentications per client address; None: off
    trusted_proxies: tuple[Network, ...] = ()  # X-Forwarded-For is believed from these only
    max_credential_bytes: int = 4096
    admin_path: str = "/_meterguard"
    admin_token_env: str = "MG_ADMIN_TOKEN"
    records_header: str = "x-meterguard-records"
    records_json_field: str | None = "data"
    records_max_body_bytes: int = 8 * 1024 * 1024
    consistency: Literal["exact", "fast"] = "exact"
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    webhooks: WebhookSettings | None = None
    ledger: LedgerSettings = LedgerSettings()
    source: str = "<config>"


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


MAX_KEY_FILE_BYTES = 64 * 1024  # a PEM public key is a few KB; anything larger is the wrong file

#: The kind of key each algorithm family needs. One key cannot serve two kinds: PyJWT refuses a PEM
#: as an HMAC secret, at request time, with an exception that used to surface as a 500.
_KEY_KINDS = {"HS": "an HMAC secret", "RS": "an RSA public key", "PS": "an RSA public key",
              "ES": "an EC public key", "Ed": "an Ed25519/Ed448 public key"}  # fmt: skip


def _jwt(raw: JWTSchema, problem: Any) -> JWTSettings | None:
    if (raw.key_env is None) == (raw.key_file is None):
        problem(("auth", "jwt"), "set exactly one of key_env (secret or PEM in a variable) or key_file (PEM)")
        return None
    where: Loc = ("auth", "jwt", "key_env") if raw.key_env is not None else ("auth", "jwt", "key_file")
    if raw.key_env is not None:
        key = os.environ.get(raw.key_env)
        if not key:
            problem(where, f"environment variable {raw.key_env} is not set")
            return None
    else:
        assert raw.key_file is not None
        try:
            with open(raw.key_file, "rb") as handle:
                data = handle.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            problem(where, f"cannot read {raw.key_file}: {exc.strerror}")
            return None
        if len(data) > MAX_KEY_FILE_BYTES:
            problem(where, f"{raw.key_file} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key")
            return None
        try:
            key = data.decode("utf-8")
        except UnicodeDecodeError:
            problem(where, f"{raw.key_file} is not text: give the key as PEM")
            return None
    kinds = sorted({_KEY_KINDS[alg[:2]] for alg in raw.algorithms})
    if len(kinds) > 1:
        problem(
            ("auth", "jwt", "algorithms"),
            f"{', '.join(raw.algorithms)} need {' and '.join(kinds)}: one key cannot be both; list one kind",
        )
        return None
    verifier = _verifier(raw.algorithms, key, where, problem)
    if verifier is None:
        return None
    return JWTSettings(
        algorithms=tuple(raw.algorithms),
        key=key,
        issuer=raw.issuer,
        audience=raw.audience,
        customer_claim=raw.customer_claim,
        leeway=raw.leeway,
        verifier=verifier,
    )


def _verifier(algorithms: list[str], key: str, where: Loc, problem: Any) -> Any:
    """The key as PyJWT uses it, loaded now so that a key that does not fit its algorithms is a
    config error (``meterguard check`` names it), never an exception while serving a request."""
    verifier: Any = None
    for name in algorithms:
        algorithm = jwt.get_algorithm_by_name(name)
        try:
            verifier = algorithm.prepare_key(key)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            problem(where, f"the key is not {_KEY_KINDS[name[:2]]} usable with {name}: {exc}")
            return None
        if hasattr(verifier, "public_key"):
            problem(where, "this is a private key: give the gateway the public key (it only verifies)")
            return None
        weak = algorithm.check_key_length(verifier)
        if weak:
            problem(where, f"the key is too weak for {name}: {weak}")
            return None
    return verifier
