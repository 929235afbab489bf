"""Admin request bodies: bounded in size (by Content-Length, and as a chunked body arrives) and in
nesting (checked before json.loads, which recurses once per level); _models.py validates the fields."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .._types import Message, Receive, Scope
from ._problems import invalid

MAX_BODY_BYTES = 64 * 1024  # admin bodies are a few fields; anything larger is a mistake or an attack
MAX_BODY_DEPTH = 8  # admin bodies are flat objects; json.loads recurses once per level
_SPECIAL = re.compile(rb'[][{}"\\]')  # brackets, and what starts, escapes or ends a string


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any] | Response:
    """The body as a JSON object, or the problem to answer. ``optional``: an empty body is ``{}``."""
    raw = await request.body()
    if optional and not raw.strip():
        return {}
    if nesting(raw) > MAX_BODY_DEPTH:
        return invalid(f"The body is nested deeper than {MAX_BODY_DEPTH} levels.", status=400)
    try:
        body = json.loads(raw, parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return invalid("The body is not valid JSON.", status=400)
    if not isinstance(body, dict):
        return invalid("The body must be a JSON object.", status=400)
    return body


def nesting(raw: bytes) -> int:
    """How deep the JSON nests, counted without parsing it; never less than the parser would find.

    One pass over the characters that matter, with the string state kept by hand: a regular
    expression for whole strings backtracks over an unterminated one (30 s for 60 KB of \\").
    """
    depth = deepest = 0
    in_string = False
    escaped = -1  # the position of a character a backslash escapes
    for match in _SPECIAL.finditer(raw):
        position = match.start()
        if position == escaped:
            continue
        char = raw[position]
        if in_string:
            if char == 0x5C:  # backslash
                escaped = position + 1
            elif char == 0x22:  # quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in b"]}":
            depth -= 1
    return deepest


def no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; RFC 8259 does not


def content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.strip()
            # Anything but digits is no length we can trust: treated as too large.
            return int(text) if text.isdigit() and len(text) <= 12 else MAX_BODY_BYTES + 1
    return None


def limited(receive: Receive) -> Receive:
    """``receive``, raising a 413 (as an HTTPException, answered as a problem) past MAX_BODY_BYTES."""
    total = 0

    async def receive_limited() -> Message:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > MAX_BODY_BYTES:
                raise HTTPException(413)
        return message

    return receive_limited


def too_large() -> Response:
    return invalid(f"The body is larger than {MAX_BODY_BYTES} bytes.", status=413)
