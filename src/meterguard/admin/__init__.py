"""The admin API (CONTRACT sections 7 and 11): customers, keys, usage and statements over HTTP, and
what an operator needs: metrics, an OpenAPI document, a dashboard and reload.

Mounted by :class:`~meterguard.MeterGuard` under ``admin.path`` when the admin token variable
is set, or run on its own with :func:`create_admin_app`. Every route but ``GET /health``,
``GET /me/usage`` and the dashboard's files needs ``Authorization: Bearer <admin token>``;
``/me/usage`` takes the customer's own API key, exactly as the gateway does.

Layout, by job: ``_spec`` (every operation once: routing and OpenAPI), ``_models`` (bodies and
documents), ``_openapi``, ``_customers`` / ``_usage`` / ``_operators`` (the endpoints), ``_app``
(token check and its throttle, standalone use), ``_bodies`` (size and depth bounds),
``_handlers`` (every exception as a problem), ``static/`` (the dashboard).
"""

from __future__ import annotations

from ._app import AdminApp, create_admin_app
from ._bodies import MAX_BODY_BYTES

__all__ = ["MAX_BODY_BYTES", "AdminApp", "create_admin_app"]
