"""The arms of BENCHMARKS.md: one Starlette app, one JSON body of 10 records, eight fronts.

``bare``        the app alone
``noop``        a do-nothing pure-ASGI middleware: the floor of any middleware
``mg-memory``   meterguard, ``memory://`` store
``mg-fast``     meterguard, Redis, ``consistency: fast``
``mg-exact``    meterguard, Redis, ``consistency: exact``
``mg-serve``    mg-exact started by ``meterguard serve`` instead of plain uvicorn (HTTP harness only:
                benchmarks/serve_target.py is the app it serves, benchmarks/http.py starts it)
``slowapi``     slowapi 0.1.x (its pure-ASGI middleware) on limits' sync Redis storage, key = X-API-Key,
                the two rate limits of the meterguard arms' plan
``limits-aio``  a minimal pure-ASGI middleware calling ``limits.aio`` (redis-py asyncio, sliding
                window counter) for the same two limits, one ``hit`` after the other

Every Redis key an arm writes starts with the run's prefix (``bench-<hex>``), so that the run
can delete exactly its own keys from a shared server afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

# mg-serve right after mg-exact: the pair it is compared with runs back to back in every round.
ARMS = ("bare", "noop", "mg-memory", "mg-fast", "mg-exact", "mg-serve", "slowapi", "limits-aio")
MG_ARMS = ("mg-memory", "mg-exact", "mg-fast")
# Arms that are a way of running a server, not an app: nothing to build in the in-process loop.
HTTP_ONLY = ("mg-serve",)
IN_PROCESS_ARMS = tuple(arm for arm in ARMS if arm not in HTTP_ONLY)
PATH = "/v1/records"
KEY_HEADER = "x-api-key"
PLAN = "scale"
# The peers enforce the two rate windows of the `scale` plan below, high enough never to refuse.
PEER_LIMITS = ("100000/second", "100000000/hour")

# Ten records, as a paginated search endpoint of a data API would return them.
RECORDS: list[dict[str, Any]] = [
    {
        "id": 1_000_000 + i,
        "author": f"user{i:03d}",
        "created_at": f"2025-06-01T12:{i:02d}:00Z",
        "text": f"Record {i}: a short post of about the length a search endpoint returns.",
        "metrics": {"likes": 7 * i, "replies": i, "reposts": 3 * i},
    }
    for i in range(10)
]

# A realistic plans file: a public health check, a weighted entitled route, three tiers. The
# benchmark's customers are on `scale`: two rate windows, call and record quotas, limits so
# high that nothing is refused during a run (a refusal would be a cheaper path than admission).
PLANS_YAML = """\
version: 1
currency: USD
billing:
  anchor: calendar
auth:
  api_key_header: x-api-key
records:
  header: x-meterguard-records
  json_field: data
consistency: {consistency}
on_store_error: fail_closed

routes:
  - match: "GET /health"
    public: true
  - match: "GET /v1/records/archive"
    weight: 5
    plans: [pro, scale]
  - match: "GET /v1/records"
    weight: 1
  - match: "GET /v1/records/{{id}}"
    weight: 1

plans:
  free:
    price: "0"
    rate_limits: ["1/second", "50/15 minutes"]
    quotas: {{calls: 500, records: 100}}
    overage: block
  pro:
    price: "5000.00"
    rate_limits: ["50/second", "900/15 minutes"]
    quotas: {{calls: 1000000, records: 1000000}}
    overage: block
  scale:
    price: "42000.00"
    rate_limits: ["100000/second", "100000000/hour"]
    quotas: {{calls: 1000000000000, records: 10000000000000}}
    overage: block
"""


def plans_yaml(consistency: str) -> str:
    return PLANS_YAML.format(consistency=consistency)


async def _records(request: Request) -> Response:
    return JSONResponse({"data": RECORDS, "next": None})


async def _health(request: Request) -> Response:
    return PlainTextResponse("ok")


def make_app(middleware: list[Any] | None = None) -> Starlette:
    """The one app every arm serves."""
    return Starlette(routes=[Route(PATH, _records), Route("/health", _health)], middleware=middleware)


@dataclass
class BuiltArm:
    name: str
    app: Any
    keys: list[str]
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in self.closers:
            try:
                await close()
            except Exception as exc:  # closing is best effort; the run's keys are deleted by prefix anyway
                logging.getLogger("benchmarks").warning("closing %s: %s", self.name, exc)


def _peer_keys(count: int) -> list[str]:
    return [f"peer_{i:04d}_{secrets.token_hex(6)}" for i in range(count)]


async def build(name: str, *, redis_url: str, prefix: str, keys: int) -> BuiltArm:
    """Build arm ``name`` in the running event loop; Redis keys go under ``prefix``."""
    if name == "bare":
        return BuiltArm(name, make_app(), _peer_keys(keys))
    if name == "noop":
        return BuiltArm(name, NoopMiddleware(make_app()), _peer_keys(keys))
    if name in MG_ARMS:
        return await _build_meterguard(name, redis_url=redis_url, prefix=prefix, keys=keys)
    if name == "slowapi":
        return _build_slowapi(redis_url=redis_url, prefix=prefix, keys=keys)
    if name == "limits-aio":
        return _build_limits_aio(redis_url=redis_url, prefix=prefix, keys=keys)
    if name in HTTP_ONLY:
        raise ValueError(f"{name} is a way of starting a server: the HTTP harness runs it (benchmarks/http.py)")
    raise ValueError(f"unknown arm {name!r}; arms: {', '.join(ARMS)}")


class NoopMiddleware:
    """A pure-ASGI middleware that does nothing: what wrapping an app costs before any work."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


async def _build_meterguard(name: str, *, redis_url: str, prefix: str, keys: int) -> BuiltArm:
    from meterguard import MeterGuard, parse_config

    consistency = "fast" if name == "mg-fast" else "exact"
    config = parse_config(plans_yaml(consistency), source=f"<bench {name}>")
    if name == "mg-memory":
        store = "memory://"
    else:
        separator = "&" if "?" in redis_url else "?"
        store = f"{redis_url}{separator}prefix={prefix}-{name}"
    guard = MeterGuard(make_app(), config=config, store=store)
    issued = await provision(guard.directory, keys)
    return BuiltArm(name, guard, issued, [guard.aclose])


async def provision(directory: Any, keys: int) -> list[str]:
    """``keys`` keys, two per customer, through the public Directory API, as an operator's would."""
    customers = max(1, keys // 2)
    issued: list[str] = []
    semaphore = asyncio.Semaphore(32)

    async def one(index: int) -> list[str]:
        async with semaphore:
            customer = f"bench-cust-{index:04d}"
            await directory.create(customer, PLAN)
            mine = []
            for _ in range(2 if index < keys - customers else 1):
                _record, key = await directory.issue_key(customer)
                mine.append(key)
            return mine

    for mine in await asyncio.gather(*(one(i) for i in range(customers))):
        issued.extend(mine)
    return issued[:keys]


async def provision_store(store_url: str, consistency: str, keys: int) -> list[str]:
    """Customers and keys in the store at ``store_url``, for a server started on it afterwards (mg-serve)."""
    from meterguard import parse_config
    from meterguard.customers import Directory
    from meterguard.store import store_from_url

    store = store_from_url(store_url)
    try:
        return await provision(Directory(parse_config(plans_yaml(consistency)), store), keys)
    finally:
        await store.aclose()


def _build_slowapi(*, redis_url: str, prefix: str, keys: int) -> BuiltArm:
    from slowapi import Limiter
    from slowapi.middleware import SlowAPIASGIMiddleware
    from starlette.middleware import Middleware

    def api_key(request: Request) -> str:
        return request.headers.get(KEY_HEADER, "")

    limiter = Limiter(
        key_func=api_key,
        default_limits=list(PEER_LIMITS),
        storage_uri=redis_url,
        storage_options={"key_prefix": f"{prefix}-slowapi"},
    )
    app = make_app(middleware=[Middleware(SlowAPIASGIMiddleware)])
    app.state.limiter = limiter

    async def close() -> None:
        limiter._storage.storage.close()

    return BuiltArm("slowapi", app, _peer_keys(keys), [close])


class LimitsAioMiddleware:
    """The least a pure-ASGI rate limiter on ``limits.aio`` does: one ``hit`` per limit and request."""

    def __init__(self, app: Any, limiter: Any, items: list[Any]) -> None:
        self.app = app
        self.limiter = limiter
        self.items = items

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = b""
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                key = value
                break
        identity = key.decode("latin-1")
        for item in self.items:
            if not await self.limiter.hit(item, identity):
                await send({"type": "http.response.start", "status": 429, "headers": [(b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


def _build_limits_aio(*, redis_url: str, prefix: str, keys: int) -> BuiltArm:
    from limits import parse
    from limits.aio.strategies import SlidingWindowCounterRateLimiter
    from limits.storage import storage_from_string

    # limits 5.x: "async+redis://" selects limits.aio.storage.RedisStorage; "redispy" picks redis-py
    # (the default implementation is coredis) so that this arm and meterguard share one client library.
    storage = storage_from_string(f"async+{redis_url}", implementation="redispy", key_prefix=f"{prefix}-limits")
    limiter = SlidingWindowCounterRateLimiter(storage)
    app = LimitsAioMiddleware(make_app(), limiter, [parse(limit) for limit in PEER_LIMITS])

    async def close() -> None:
        client = getattr(getattr(storage, "bridge", None), "storage", None)
        if client is not None:
            await client.aclose()

    return BuiltArm("limits-aio", app, _peer_keys(keys), [close])
