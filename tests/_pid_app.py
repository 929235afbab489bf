"""A data app that says which worker process answered (for tests of several uvicorn workers)."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def posts(request: Request) -> Response:
    count = int(request.query_params.get("n", "1"))
    return JSONResponse({"data": list(range(count)), "pid": os.getpid()})


app = Starlette(routes=[Route("/health", posts), Route("/v1/posts/{rest:path}", posts)])
