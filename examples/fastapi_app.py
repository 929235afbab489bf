"""A FastAPI data API behind meterguard (FastAPI is not a meterguard dependency: pip install fastapi).

Run it (a Redis on 127.0.0.1:6379, as examples/plans.yaml says; or MG_STORE=...):
    export MG_ADMIN_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(24))")
    meterguard customers create acme-2 --plan basic --config examples/plans.yaml
    KEY=$(meterguard keys create acme-2 --config examples/plans.yaml)   # prints the key once
    uvicorn examples.fastapi_app:app
    curl -H "x-api-key: $KEY" 'http://127.0.0.1:8000/v1/posts/search?q=redis&limit=5'

docs/quickstart.md walks through the same from an empty directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response

from meterguard import MeterGuard

PLANS = Path(__file__).with_name("plans.yaml")
POSTS = [{"id": str(i), "text": f"post number {i} about redis"} for i in range(1, 501)]

app = FastAPI(title="posts")
# Pure ASGI middleware: add_middleware works as with any Starlette middleware class. Add it
# before CORSMiddleware, if any, so that CORS wraps it and its 401/429/402 answers carry CORS
# headers (the middleware added last is the outermost).
app.add_middleware(MeterGuard, config=PLANS, store=os.environ.get("MG_STORE"))


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/posts/search")
async def search(request: Request, q: str = "", limit: int = 10) -> dict[str, Any]:
    limit = min(limit, 100)
    # What a blocking plan has left this period; None on a plan that bills records past its
    # quota (a paying customer gets whole pages) or that sets no records quota.
    remaining = request.scope.get("meterguard", {}).get("records_remaining")
    if remaining is not None:
        limit = min(limit, remaining)
    data = [post for post in POSTS if q in post["text"]][:limit]
    return {"data": data, "meta": {"result_count": len(data)}}  # counted from "data"


@app.get("/v1/posts")
async def recent(limit: int = 10) -> list[dict[str, str]]:
    return POSTS[: min(limit, 100)]  # a top-level array: its items are the records


@app.get("/v1/posts/{post_id}")
async def post(post_id: str, response: Response) -> dict[str, Any]:
    for item in POSTS:
        if item["id"] == post_id:
            response.headers["x-meterguard-records"] = "1"  # removed by meterguard before sending
            return {"data": item}
    raise HTTPException(status_code=404, detail="not found")
