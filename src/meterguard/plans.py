"""Plans, their windows and quotas, and the route table (compiled once at load)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

Strategy = Literal["sliding", "fixed"]
MICROS = 1_000_000  # prices are kept as integer millionths of the currency unit
#: The request methods a route may name (RFC 9110 section 9, and PATCH of RFC 5789); ``*`` is any.
#: Anything else is a typo (``FETCH``) that would silently never match.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
#: Statuses billed when a plan does not say (``billable_status``): everything but 5xx. A 4xx is
#: the client's doing and still cost the service a lookup (and billing it leaves no free probing);
#: a 5xx is the provider's failure, which no customer should pay for (docs/configuration.md).
DEFAULT_BILLABLE = frozenset(range(100, 500))


def window_name(seconds: int) -> str:
    """Policy name of a window by its length: ``1s``, ``1m``, ``15m``, ``1h``, ``1d``."""
    for size, suffix in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class Window:
    """A rate window: at most ``limit`` units per ``seconds``; ``name`` is its policy name.

    ``counter`` identifies the count in the store. It defaults to the name, so a plan change
    keeps a customer's "1m" count (limits keys counters by amount and resets them); route
    windows add their route, so two routes' "route-15m" windows count apart.
    """

    name: str
    limit: int
    seconds: int
    counter: str = ""
    # Windows key the fast path's leases and the usage it gives back, a dict lookup per request:
    # the generated __hash__ rehashed every field each time (13 calls, ~10 us per request).
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.counter:
            object.__setattr__(self, "counter", self.name)
        object.__setattr__(self, "_hash", hash((self.name, self.limit, self.seconds, self.counter)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class Quotas:
    calls: int | None = None
    records: int | None = None


@dataclass(frozen=True, slots=True)
class Tier:
    """One graduated tier: ``price`` per unit for the overage units up to ``up_to`` (cumulative).

    ``up_to`` counts overage units, i.e. units past the included quota, as Stripe's graduated
    tiers do; ``None`` means no upper end (the last tier).
    """

    up_to: int | None
    price: Decimal

    @property
    def price_micros(self) -> int:
        return int(self.price * MICROS)


@dataclass(frozen=True, slots=True)
class MeterPrice:
    """Overage price of one meter: per ``unit`` units past the included quota, by graduated tiers.

    A flat ``{unit, price}`` is a single open-ended tier, so billing has one code path; built
    with ``price`` alone, ``tiers`` is filled in. ``price`` is the first tier's price.
    """

    unit: int
    price: Decimal = Decimal("0")
    tiers: tuple[Tier, ...] = ()

    def __post_init__(self) -> None:
        if not self.tiers:
            object.__setattr__(self, "tiers", (Tier(None, self.price),))
        else:
            object.__setattr__(self, "price", self.tiers[0].price)

    @property
    def price_micros(self) -> int:
        return int(self.price * MICROS)

    @property
    def graduated(self) -> bool:
        return len(self.tiers) > 1


@dataclass(frozen=True, slots=True)
class Overage:
    """Serve past the quota and bill it; ``None`` on a plan means ``overage: block``."""

    calls: MeterPrice | None = None
    records: MeterPrice | None = None
    spend_cap: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    price: Decimal = Decimal("0")
    windows: tuple[Window, ...] = ()
    route_windows: Mapping[str, tuple[Window, ...]] = field(default_factory=dict)
    quotas: Quotas = Quotas()
    overage: Overage | None = None
    alerts: tuple[float, ...] = ()
    strategy: Strategy = "sliding"
    #: Response statuses whose calls and records are billed; a call answered with another status
    #: is refunded when its response starts (_responder.Responder).
    billable: frozenset[int] = DEFAULT_BILLABLE

    def windows_for(self, route_match: str | None) -> tuple[Window, ...]:
        if route_match is None:
            return self.windows
        return self.windows + self.route_windows.get(route_match, ())


_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the routes table. ``match`` is ``METHOD PATH`` as written in plans.yaml."""

    match: str
    weight: int = 1
    plans: frozenset[str] | None = None
    public: bool = False
    method: str = field(init=False)
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        method, path = parse_match(self.match)
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "pattern", compile_path(path))

    def allows(self, plan: str) -> bool:
        return self.plans is None or plan in self.plans


def parse_match(match: str) -> tuple[str, str]:
    """Split ``"GET /v1/posts"`` into method and path; raises ValueError with a reason."""
    parts = match.split()
    if len(parts) != 2:
        raise ValueError("must be 'METHOD /path', e.g. 'GET /v1/posts/{id}'")
    method, path = parts
    if method != "*" and method.upper() not in METHODS:
        raise ValueError(f"method {method!r} is not an HTTP method; use one of {', '.join(sorted(METHODS))} or *")
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/'")
    if "*" in path[:-1]:
        raise ValueError("'*' may only end the path")
    return method.upper(), path


def compile_path(path: str) -> re.Pattern[str]:
    prefix = path.endswith("*")
    body = path[:-1] if prefix else path
    pieces: list[str] = []
    last = 0
    for param in _PARAM.finditer(body):
        pieces.append(re.escape(body[last : param.start()]))
        pieces.append("[^/]+")
        last = param.end()
    pieces.append(re.escape(body[last:]))
    return re.compile("".join(pieces) + (".*" if prefix else "") + r"\Z")


class RouteTable:
    """First match wins. Static paths hit a dict; patterns are scanned in file order."""

    __slots__ = ("routes", "_static", "_patterns")

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        self._static: dict[tuple[str, str], tuple[int, Route]] = {}
        self._patterns: list[tuple[int, Route]] = []
        for index, route in enumerate(routes):
            path = route.match.split()[1]
            if "{" in path or path.endswith("*") or route.method == "*":
                self._patterns.append((index, route))
            else:
                self._static.setdefault((route.method, path), (index, route))

    def match(self, method: str, path: str) -> Route | None:
        found = self._static.get((method, path))
        if found is not None and (not self._patterns or found[0] < self._patterns[0][0]):
            return found[1]  # a static route before every pattern: _match's answer, without its call
        route = self._match(method, path)
        if route is None and method == "HEAD":
            # Starlette and most frameworks answer HEAD with the GET route: so does the table, or a
            # HEAD would slip past a GET route's weight and entitlement.
            route = self._match("GET", path)
        return route

    def _match(self, method: str, path: str) -> Route | None:
        found = self._static.get((method, path))
        limit = found[0] if found is not None else len(self.routes)
        for index, route in self._patterns:
            if index >= limit:
                break
            if (route.method == "*" or route.method == method) and route.pattern.match(path):
                return route
        return found[1] if found is not None else None
