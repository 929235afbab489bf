"""Shared test helpers: a data app to wrap, a settable clock, and header parsers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import http_sfv
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

SEEN: list[dict[str, Any]] = []  # scope["meterguard"] of every request that reached the app


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, when: datetime | float) -> None:
        self.now = when.timestamp() if isinstance(when, datetime) else float(when)

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += seconds


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


async def posts(request: Request) -> Response:
    SEEN.append(dict(request.scope.get("meterguard") or {}))
    count = int(request.query_params.get("n", "10"))
    return JSONResponse({"data": [{"id": i, "text": f"post {i}"} for i in range(count)], "meta": {"n": count}})


async def header_count(request: Request) -> Response:
    SEEN.append(dict(request.scope.get("meterguard") or {}))
    return PlainTextResponse("rows\n", headers={"x-meterguard-records": request.query_params.get("n", "7")})


async def stream(request: Request) -> Response:
    SEEN.append(dict(request.scope.get("meterguard") or {}))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), media_type="text/plain")


async def raw(request: Request) -> Response:
    SEEN.append(dict(request.scope.get("meterguard") or {}))
    body = request.query_params.get("body", '{"data": [1, 2, 3]}').encode()
    headers = {"x-meterguard-records": request.query_params["records"]} if "records" in request.query_params else None
    status = int(request.query_params.get("status", "200"))
    return Response(body, status, headers, media_type=request.query_params.get("type", "application/json"))


async def boom(request: Request) -> Response:
    SEEN.append(dict(request.scope.get("meterguard") or {}))
    raise RuntimeError("the app failed")


data_app = Starlette(
    routes=[
        Route("/health", posts),
        Route("/v1/posts/search", posts),
        Route("/v1/posts/archive", posts),
        Route("/v1/posts/{post_id}", posts),
        Route("/v1/header", header_count),
        Route("/v1/stream", stream),
        Route("/v1/raw", raw),
        Route("/v1/boom", boom),
        Route("/v1/other/{rest:path}", posts, methods=["GET", "POST", "OPTIONS"]),
    ]
)


def sf_list(value: str) -> dict[str, dict[str, Any]]:
    """Parse an RFC 8941 list of strings with parameters into {item: params} (raises if malformed)."""
    parsed = http_sfv.List()
    parsed.parse(value.encode())
    return {item.value: dict(item.params) for item in parsed}


def sf_dict(value: str) -> dict[str, tuple[Any, dict[str, Any]]]:
    parsed = http_sfv.Dictionary()
    parsed.parse(value.encode())
    return {name: (item.value, dict(item.params)) for name, item in parsed.items()}
