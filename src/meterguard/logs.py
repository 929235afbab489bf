"""Logging: one hierarchy (``meterguard.*``), the request's context on every line, opt-in JSON.

The middleware puts a :class:`RequestContext` in a context variable when a request comes in and
adds the customer once it is known; every line logged while that request runs (its own task, and
tasks it starts) carries ``request_id``, ``route``, ``customer``, ``key_id`` and ``plan`` where
known. Building the context costs one small object and one ``ContextVar.set``; the strings are
made only when a line is actually written.

``configure_logging("json")`` (or ``MG_LOG_FORMAT=json``) writes one JSON object per line to
stderr; ``"text"`` writes ``time level logger: message [customer=... route=...]``. Neither ever
writes a key or token: meterguard never logs one, and both formatters also mask anything that
looks like an API key, a bearer token or a JWT in a message or traceback (CONTRACT 10).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = ["LOG_FORMAT_ENV", "JsonFormatter", "RequestContext", "TextFormatter", "begin", "configure_logging"]

LOG_FORMAT_ENV = "MG_LOG_FORMAT"
FIELDS = ("request_id", "customer", "key_id", "plan", "route")

_ids = itertools.count(1)
_PROCESS = secrets.token_hex(3)  # request ids are unique across workers and restarts without a lookup
# A meterguard key (CONTRACT 10), a bearer credential, a JWT (three base64url parts, header first).
_SECRET = re.compile(r"mg_live_[0-9A-Za-z]+|(?i:bearer)\s+[^\s,;\"']+|eyJ[\w-]*\.[\w-]+\.[\w-]*")


class _Principal(Protocol):
    @property
    def customer(self) -> str: ...
    @property
    def key_id(self) -> str: ...
    @property
    def plan(self) -> str: ...


class _Route(Protocol):
    @property
    def match(self) -> str: ...


class RequestContext:
    """What the log lines of one request say about it; filled in as the middleware learns it."""

    __slots__ = ("number", "method", "path", "route", "principal")

    def __init__(self, number: int, method: str, path: str, route: _Route | None) -> None:
        self.number = number
        self.method = method
        self.path = path
        self.route = route
        self.principal: _Principal | None = None

    @property
    def request_id(self) -> str:
        return f"{_PROCESS}-{self.number:x}"

    @property
    def plan(self) -> str:
        return self.principal.plan if self.principal is not None else ""

    def fields(self) -> dict[str, str]:
        fields = {
            "request_id": self.request_id,
            "route": self.route.match if self.route is not None else f"{self.method} {self.path}",
        }
        if self.principal is not None:
            fields["customer"] = self.principal.customer
            fields["key_id"] = self.principal.key_id
            fields["plan"] = self.principal.plan
        return fields


REQUEST: ContextVar[RequestContext | None] = ContextVar("meterguard_request", default=None)


def begin(method: str, path: str, route: _Route | None) -> RequestContext:
    """The context of a request that has just come in (its task's copy of the variable)."""
    context = RequestContext(next(_ids), method, path, route)
    REQUEST.set(context)
    return context


def current() -> RequestContext | None:
    return REQUEST.get()


def redact(text: str) -> str:
    return _SECRET.sub(lambda match: match.group(0)[:8].split()[0] + "***", text)


class ContextFilter(logging.Filter):
    """Adds the running request's fields to a record (as attributes), where there is one."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = REQUEST.get()
        if context is not None:
            for name, value in context.fields().items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


def _context_of(record: logging.LogRecord) -> dict[str, str]:
    return {name: getattr(record, name) for name in FIELDS if getattr(record, name, None) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the request's fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        line.update(_context_of(record))
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = _context_of(record)
        if context:
            text += " [" + " ".join(f"{name}={value}" for name, value in context.items()) + "]"
        return redact(text)


_HANDLER_NAME = "meterguard"


def configure_logging(format: str | None = None, *, level: int | str = logging.INFO, stream: Any = None) -> None:
    """Send the ``meterguard`` loggers to ``stream`` (stderr) as ``json`` or ``text``.

    ``format`` defaults to ``MG_LOG_FORMAT`` (then ``text``). Calling it again replaces the handler
    it installed. The lines do not also propagate to the root logger, so that they are not
    written twice under a framework that configures the root logger too.
    """
    chosen = (format or os.environ.get(LOG_FORMAT_ENV) or "text").lower()
    if chosen not in ("json", "text"):
        raise ValueError(f"log format must be json or text, not {chosen!r}")
    logger = logging.getLogger("meterguard")
    for handler in list(logger.handlers):
        if handler.name == _HANDLER_NAME:  # name, not get_name(): None for an unnamed handler
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def configure_from_env() -> None:
    """``MG_LOG_FORMAT`` set: configure once (MeterGuard calls this; an explicit call wins)."""
    if os.environ.get(LOG_FORMAT_ENV) and not any(
        handler.name == _HANDLER_NAME for handler in logging.getLogger("meterguard").handlers
    ):
        configure_logging()


def current_plan() -> str:
    """The plan of the running request's customer; '' when there is none or it is not known yet."""
    context = REQUEST.get()
    return context.plan if context is not None else ""
