"""The bundled demo: a small "posts" data API, in the spirit of X's, and plans modelled on its tiers.

``meterguard demo`` serves it behind :class:`~meterguard.MeterGuard`. The app shows both ways
of reporting records: search results are counted from the top-level ``data`` array, a single
post reports itself through the records header. It reads ``scope["meterguard"]`` to cap a page
to what a customer on a blocking plan has left (``records_remaining`` is ``None`` on a plan that
bills its records: those get whole pages).

Where the demo keeps its state (:func:`demo_store`): the ``--store`` given, else a Redis that
answers at the default URL (under a key prefix of its own), else ``memory://``. On Redis the
CLI can read what the demo served; the banner prints the command, with the plans file's path.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ._types import Receive, Scope, Send
from .config import Config, parse_config
from .customers import Directory
from .errors import CustomerExists
from .store import split_prefix

PLANS_RESOURCE = "demo_plans.yaml"
#: Tried when no store is given: a local Redis, under a prefix that keeps the demo's keys apart.
DEMO_REDIS_URL = "redis://127.0.0.1:6379/0?prefix=mgdemo"
PROBE_SECONDS = 0.3
POST_COUNT = 2000
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
RECORDS_HEADER = "x-meterguard-records"  # records.header of demo_plans.yaml

_TOPICS = (
    "redis",
    "python",
    "asgi",
    "rate limits",
    "billing",
    "quotas",
    "starlette",
    "uvicorn",
    "api keys",
    "observability",
    "postgres",
    "kubernetes",
    "latency",
    "caching",
    "open source",
)
_VERBS = ("shipped", "benchmarked", "debugged", "wrote about", "is migrating to", "gave a talk on", "loves")
_AUTHORS = ("ada", "grace", "linus", "guido", "barbara", "ken", "margaret", "dennis", "radia", "tim")
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def demo_plans_text() -> str:
    return files("meterguard").joinpath(PLANS_RESOURCE).read_text(encoding="utf-8")


def demo_config() -> Config:
    """The demo's plans (free, basic, pro, enterprise), loaded from package data."""
    return parse_config(demo_plans_text(), source=f"meterguard/{PLANS_RESOURCE}")


def demo_plans_path() -> AbstractContextManager[Path]:
    """The demo's plans as a file, for ``meterguard usage ... --config PATH`` (a real path while
    the context lasts: the installed file itself, or a copy when the package is zipped)."""
    return as_file(files("meterguard").joinpath(PLANS_RESOURCE))


def demo_store(explicit: str | None) -> tuple[str, str]:
    """``(store URL, why)``: the one given, else a Redis answering at the default URL, else memory."""
    if explicit:
        return explicit, "as given"
    bare, _ = split_prefix(DEMO_REDIS_URL)
    try:
        from redis import Redis

        client = Redis.from_url(bare, socket_connect_timeout=PROBE_SECONDS, socket_timeout=PROBE_SECONDS)
        try:
            client.ping()
        finally:
            client.close()
    except Exception:  # nothing answering, or something that is not Redis: memory it is
        return "memory://", f"no Redis answered at {bare}"
    return DEMO_REDIS_URL, f"a Redis answered at {bare}; --store memory:// keeps it all in this process"


def _posts() -> list[dict[str, Any]]:
    # Deterministic (no random): the same ids and texts on every run make the curl lines reproducible.
    posts = []
    for index in range(POST_COUNT):
        digest = hashlib.sha256(str(index).encode()).digest()
        topic = _TOPICS[digest[0] % len(_TOPICS)]
        created = _EPOCH + timedelta(minutes=17 * index)
        posts.append(
            {
                "id": str(1_800_000_000_000_000_000 + index),
                "author": _AUTHORS[digest[1] % len(_AUTHORS)],
                "text": f"Just {_VERBS[digest[2] % len(_VERBS)]} {topic} #{topic.replace(' ', '')}",
                "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "lang": "en",
                "metrics": {"likes": digest[3], "reposts": digest[4] % 40},
            }
        )
    posts.reverse()  # newest first, as search results are ordered
    return posts


@dataclass(frozen=True, slots=True)
class _Page:
    limit: int
    capped: bool


class PostsAPI:
    """The demo data API."""

    def __init__(self) -> None:
        self.posts = _posts()
        self.by_id = {post["id"]: post for post in self.posts}
        # Recent search sees the last 7 days of the corpus; the archive (pro and up) sees all of it.
        newest = datetime.strptime(self.posts[0]["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        cutoff = (newest - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.recent = [post for post in self.posts if post["created_at"] >= cutoff]
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/posts/search", self.search, methods=["GET"]),
                Route("/v1/posts/archive", self.archive, methods=["GET"]),
                Route("/v1/posts/{id}", self.lookup, methods=["GET"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def _page(self, request: Request) -> _Page | JSONResponse:
        text = request.query_params.get("limit", str(DEFAULT_LIMIT))
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
            return _error(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
        limit = int(text)
        remaining = (request.scope.get("meterguard") or {}).get("records_remaining")
        # A blocking plan cannot go past its records quota: serve at most what is left rather than
        # a page that overshoots it. Plans billed for overage read None (nothing to cap) until
        # their spend cap is reached.
        if remaining is not None and remaining < limit:
            return _Page(max(0, remaining), True)
        return _Page(limit, False)

    def _results(self, request: Request, corpus: list[dict[str, Any]]) -> JSONResponse:
        page = self._page(request)
        if isinstance(page, JSONResponse):
            return page
        query = request.query_params.get("q", "").strip().lower()
        token = request.query_params.get("next_token", "0")
        start = int(token) if token.isascii() and token.isdigit() else 0
        matches = [post for post in corpus if query in post["text"].lower()] if query else corpus
        data = matches[start : start + page.limit]
        end = start + len(data)
        meta: dict[str, Any] = {
            "result_count": len(data),
            "total_matches": len(matches),
            "newest_id": data[0]["id"] if data else None,
            "oldest_id": data[-1]["id"] if data else None,
            "next_token": str(end) if end < len(matches) and data else None,
            "capped_by_quota": page.capped,
        }
        return JSONResponse({"data": data, "meta": meta})

    async def search(self, request: Request) -> JSONResponse:
        return self._results(request, self.recent)

    async def archive(self, request: Request) -> JSONResponse:
        return self._results(request, self.posts)

    async def lookup(self, request: Request) -> JSONResponse:
        post = self.by_id.get(request.path_params["id"])
        if post is None:
            return _error(404, f"no post with id {request.path_params['id']!r}", records=0)
        # A single object is not a top-level array: report the one record through the header.
        return JSONResponse({"data": post}, headers={RECORDS_HEADER: "1"})


def _error(status: int, detail: str, *, records: int = 0) -> JSONResponse:
    return JSONResponse({"errors": [{"detail": detail}]}, status_code=status, headers={RECORDS_HEADER: str(records)})


def create_demo_app(config: Config | None = None) -> PostsAPI:
    """The posts API (``config`` is accepted for compatibility: the app needs nothing from it)."""
    return PostsAPI()


@dataclass(frozen=True, slots=True)
class DemoCustomer:
    plan: str
    customer: str
    key_id: str
    key: str


async def provision(directory: Directory, prefix: str = "demo-") -> list[DemoCustomer]:
    """One customer per plan (reused when the store already has it) and a fresh key for each."""
    made = []
    for plan in directory.config.plans:
        customer = f"{prefix}{plan}"
        try:
            await directory.create(customer, plan)
        except CustomerExists:
            await directory.update(customer, plan=plan, status="active")
        record, key = await directory.issue_key(customer)
        made.append(DemoCustomer(plan, customer, record.key_id, key))
    return made
