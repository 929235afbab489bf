"""A FastAPI data API behind meterguard (FastAPI is not a meterguard dependency: pip install fastapi).

Run it:
    export MG_ADMIN_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(24))")
    uvicorn examples.fastapi_app:app
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
# Pure ASGI middleware: add_middleware works as with any Starlette middleware class.
app.add_middleware(MeterGuard, config=PLANS, store=os.environ.get("MG_STORE"))


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/posts/search")
async def search(request: Request, q: str = "", limit: int = 10) -> dict[str, Any]:
    limit = min(limit, 100)
    remaining = request.scope.get("meterguard", {}).get("records_remaining")
    if remaining is not None:  # never serve a blocking plan more than it has left
        limit = min(limit, remaining)
    data = [post for post in POSTS if q in post["text"]][:limit]
    return {"data": data, "meta": {"result_count": len(data)}}  # counted from "data"


@app.get("/v1/posts/{post_id}")
async def post(post_id: str, response: Response) -> dict[str, Any]:
    for item in POSTS:
        if item["id"] == post_id:
            response.headers["x-meterguard-records"] = "1"  # removed by meterguard before sending
            return {"data": item}
    raise HTTPException(status_code=404, detail="not found")
