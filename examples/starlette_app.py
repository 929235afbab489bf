"""A Starlette data API behind meterguard.

Run it:
    export MG_ADMIN_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(24))")
    meterguard customers create acme --plan pro --config examples/plans.yaml
    meterguard keys create acme --config examples/plans.yaml
    uvicorn examples.starlette_app:app

or let the CLI wrap the bare app:
    meterguard serve examples.starlette_app:api --config examples/plans.yaml
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meterguard import MeterGuard

PLANS = Path(__file__).with_name("plans.yaml")
POSTS = [{"id": str(i), "text": f"post number {i} about redis"} for i in range(1, 501)]


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def search(request: Request) -> JSONResponse:
    limit = min(int(request.query_params.get("limit", "10")), 100)
    # What a blocking plan has left this period. Serving no more than that keeps it from
    # overshooting its records quota with one large page. None where there is nothing to cap:
    # no records quota, or a plan that bills records past it (until its spend cap stops it).
    remaining = request.scope.get("meterguard", {}).get("records_remaining")
    if remaining is not None:
        limit = min(limit, remaining)
    query = request.query_params.get("q", "")
    data = [post for post in POSTS if query in post["text"]][:limit]
    # meterguard counts the records in the top-level "data" array (records.json_field).
    return JSONResponse({"data": data, "meta": {"result_count": len(data)}})


async def post(request: Request) -> JSONResponse:
    found = [p for p in POSTS if p["id"] == request.path_params["id"]]
    if not found:
        return JSONResponse(
            {"errors": [{"detail": "not found"}]}, status_code=404, headers={"x-meterguard-records": "0"}
        )
    # A single object is not an array: report the count in the records header (never sent on).
    return JSONResponse({"data": found[0]}, headers={"x-meterguard-records": "1"})


routes = [
    Route("/health", health),
    Route("/v1/posts/search", search),
    Route("/v1/posts/{id}", post),
]

#: The bare app, for `meterguard serve examples.starlette_app:api --config examples/plans.yaml`.
api = Starlette(routes=routes)

#: The app with meterguard as Starlette middleware; the store comes from MG_STORE or plans.yaml.
app = Starlette(
    routes=routes,
    middleware=[Middleware(MeterGuard, config=PLANS, store=os.environ.get("MG_STORE"))],
)
