"""What an operator uses: ``/health``, ``/plans``, ``/metrics``, ``/reload``, ``/openapi.json``, ``/dashboard``."""

from __future__ import annotations

from functools import cache
from importlib import resources
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ..errors import StoreError
from ..metrics import CONTENT_TYPE
from ._base import AdminBase, document
from ._documents import plans_document
from ._handlers import route_path
from ._models import Health, PlansDocument, ReloadSummary
from ._openapi import openapi_document
from ._problems import NO_STORE, STORE_RETRY_AFTER, json_response, problem

#: The dashboard is a page and two files, no build step; it talks to this API with the token the
#: operator types in, so the files hold nothing secret and may be served without one.
STATIC = {
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
# Only this origin's files and API; no inline script, no framing (the page handles a token).
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class OperatorEndpoints(AdminBase):
    async def health(self, request: Request) -> Response:
        try:
            await self.store.ping()
        except StoreError:
            # 503 so that load balancers and orchestrators take the process out of rotation.
            return document(
                Health, {"status": "degraded", "store": "unreachable"}, 503, {"Retry-After": str(STORE_RETRY_AFTER)}
            )
        return document(Health, {"status": "ok", "store": urlsplit(self.store.url).scheme})

    async def plans(self, request: Request) -> Response:
        return document(PlansDocument, plans_document(self.config))

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), headers=NO_STORE, media_type=CONTENT_TYPE)

    async def reload(self, request: Request) -> Response:
        if self.reloader is None:
            return problem("not-reloadable", "Not reloadable", 409, "This admin API has no plans file to reload.")
        result = await self.reloader()
        if not result.ok:
            errors = [{"field": "", "reason": line} for line in result.errors]
            return problem(
                "invalid-plans",
                "Invalid plans",
                422,
                "plans.yaml was not reloaded; the running plans stay. " + " | ".join(result.errors[:5]),
                errors=errors,
            )
        return document(ReloadSummary, dict(result.summary))

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document(request.scope.get("root_path", ""), tuple(sorted(self.config.plans))))

    async def static(self, request: Request) -> Response:
        name, media_type = STATIC[route_path(request.scope)]
        return Response(_static(name), media_type=media_type, headers={**NO_STORE, "Content-Security-Policy": _CSP})
