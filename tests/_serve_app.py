"""An app that reports how it is being served: event loop, HTTP protocol, root path, client (tests/test_serve.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    loop = type(asyncio.get_running_loop())
    # uvicorn hands the app the bound methods of its protocol's RequestResponseCycle: their
    # module says which HTTP implementation parsed the request (httptools_impl or h11_impl).
    owner = getattr(receive, "__self__", None)
    body = {
        "loop": f"{loop.__module__}.{loop.__qualname__}",
        "http": type(owner).__module__ if owner is not None else None,
        "root_path": scope.get("root_path", ""),
        "client": (scope.get("client") or [None])[0],
        "scheme": scope.get("scheme"),
    }
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def no_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same app without the lifespan protocol (uvicorn's "auto" then serves without one)."""
    if scope["type"] == "lifespan":
        raise RuntimeError("no lifespan here")
    await app(scope, receive, send)


async def failing_shutdown(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same app, whose lifespan shutdown fails (MeterGuard then hears no shutdown.complete)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.failed", "message": "the app's own cleanup failed"})
                return
    await app(scope, receive, send)
