"""Idempotency-Key (draft-ietf-httpapi-idempotency-key-header), with Stripe's semantics.

The first request with a key is decided and billed as any other; its response is kept with
the request's fingerprint (method, path, query, body digest). A repeat with the same
fingerprint gets that response byte for byte and the app does not run; the same key with
another request is 422, and while the first still runs, 409. The store does the bookkeeping
atomically with the admission (store/lua/meter.lua); this module reads the request body for
the fingerprint and captures the response.
"""

from __future__ import annotations

import hashlib

from ._types import Message, Receive, Scope
from .store.base import StoredResponse

MAX_KEY_LENGTH = 255
MAX_REQUEST_BYTES = 1024 * 1024  # a body read whole for its digest; larger requests cannot carry a key
MAX_RESPONSE_BYTES = 1024 * 1024  # a larger response is not stored: a repeat runs as a new call
TTL_SECONDS = 86_400


def parse_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request's Idempotency-Key; ValueError if malformed."""
    for name, value in headers:
        if name == b"idempotency-key":
            text = value.strip()
            if 0 < len(text) <= MAX_KEY_LENGTH and all(33 <= byte <= 126 for byte in text):
                return text.decode("ascii")
            raise ValueError("malformed Idempotency-Key")
    return None


class TooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int = MAX_REQUEST_BYTES) -> tuple[bytes, Receive]:
    """The whole request body, and a ``receive`` that hands it to the app again.

    TooLarge past ``limit``. A disconnect while reading ends the body there; the app then sees
    the disconnect after it.
    """
    chunks: list[bytes] = []
    size = 0
    tail: list[Message] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            tail.append(message)
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    queued: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *tail]

    async def replay() -> Message:
        if queued:
            return queued.pop(0)
        return await receive()

    return body, replay


def fingerprint(scope: Scope, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (scope["method"].encode(), scope.get("raw_path") or scope["path"].encode(), scope["query_string"]):
        digest.update(part)
        digest.update(b"\0")
    digest.update(hashlib.sha256(body).digest())
    return digest.hexdigest()


class Capture:
    """A copy of the response as the app sent it (status, headers, body), up to a size."""

    __slots__ = ("status", "headers", "chunks", "size", "complete", "too_large")

    def __init__(self) -> None:
        self.status = 0
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.too_large = False

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = tuple(headers)

    def body(self, chunk: bytes, more: bool) -> None:
        if not self.too_large:
            self.size += len(chunk)
            if self.size > MAX_RESPONSE_BYTES:
                self.too_large, self.chunks = True, []
            else:
                self.chunks.append(chunk)
        if not more:
            self.complete = True

    def response(self) -> StoredResponse | None:
        """The response to store, or None when it cannot be replayed (incomplete or too large)."""
        if not self.complete or self.too_large:
            return None
        return StoredResponse(self.status, self.headers, b"".join(self.chunks))
