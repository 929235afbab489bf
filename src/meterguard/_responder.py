"""The per-request responder: wraps ``send`` for one admitted request.

It adds the rate limit headers, counts the response's records and settles them before the last
body chunk leaves. Bodies are passed through untouched unless they must be read to count a JSON
array, and then held only up to ``records.max_body_bytes`` (starlette's GZipMiddleware
pattern); a larger one is counted as it passes (records.StreamCounter). A response whose
records could not be counted (labelled JSON and not JSON, or cut short) is reported, never
skipped silently: a log line with customer and route, the uncounted metric, and ``uncounted`` in
the usage document (CONTRACT 11). A response whose status the plan does not bill
(``billable_status``) gives its call back and bills no records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import idempotency
from ._types import Message, Send
from .errors import StoreError
from .meter import MeterEngine, Ticket
from .metrics import Metrics
from .records import Counter, StreamCounter, is_json, parse_header
from .responses import Headers
from .store.base import Settlement
from .unresolved import Entry

log = logging.getLogger("meterguard")

#: Responses that never have a body (RFC 9110 section 6.4.1): nothing to count, nothing uncounted.
_NO_BODY = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class Counting:
    """How records are counted under one version of plans.yaml (a reload makes a new one; a
    request in flight keeps the one it started with)."""

    header: bytes  # the app's records header, lower case
    count_json: Counter | None  # None: JSON bodies are not counted
    json_field: str
    max_body: int  # a JSON body larger than this is counted as it streams, not held


class Responder:
    """``send`` of one admitted request (the module docstring says what it does)."""

    __slots__ = (
        "_send", "_counting", "_engine", "_metrics", "_plan", "ticket", "metered", "records", "settled", "_buffer",
        "_buffered", "_capture", "_unresolved", "_billable", "refund", "uncounted", "started", "_head", "_stream",
    )  # fmt: skip

    def __init__(
        self,
        send: Send,
        counting: Counting,
        engine: MeterEngine,
        metrics: Metrics,
        plan: str,
        ticket: Ticket | None,
        metered: Headers,
        capture: idempotency.Capture | None = None,
        unresolved: Entry | None = None,
        *,
        billable: frozenset[int] | None = None,
        head: bool = False,
    ) -> None:
        self._send = send
        self._counting = counting
        self._engine = engine  # the request's own: settled under the plans it was decided under
        self._metrics = metrics
        self._plan = plan
        self._unresolved = unresolved  # no ticket: the records wait with the request's usage
        self._capture = capture
        self.ticket = ticket
        self.metered = metered
        self._billable = billable  # None: every status is billed (no plan known yet)
        self._head = head
        self.records = 0
        self.refund = False
        self.uncounted = ""  # why the records could not be counted, once they could not
        self.started = False
        self.settled = False
        self._buffer: list[bytes] | None = None
        self._buffered = 0
        self._stream: StreamCounter | None = None  # a body over records.max_body_bytes, counted as it passes

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self._capture is None and self._stream is None:
                buffer = self._buffer
                if buffer is None:
                    # Passed through as it is; the last chunk settles first.
                    if not self.settled and not message.get("more_body", False):
                        await self._finish()
                    await self._send(message)
                    return
                if not buffer and not message.get("more_body", False):
                    body = message.get("body", b"")
                    if len(body) <= self._counting.max_body:
                        # The whole body in one message (a JSONResponse): counted, settled, sent as it came.
                        self._buffer = None
                        self._counted(body)
                        later = self._settle()
                        if later is not None:
                            await self._settle_later(later)
                        await self._send(message)
                        return
            await self._body(message)
        elif kind == "http.response.start":
            await self._send(self._start(message))
        else:
            await self._send(message)

    def _start(self, message: Message) -> Message:
        """The response's start with the metered headers added and the records header removed;
        decides how its records are counted."""
        counting = self._counting
        self.started = True
        status: int = message["status"]
        headers: list[tuple[bytes, bytes]] = []
        counted: int | None = None
        content_type = b""
        length: int | None = None
        for name, value in message.get("headers", ()):
            lower = name.lower()
            if lower == counting.header:
                counted = parse_header(value)
                continue  # the app's count is between the app and meterguard
            if lower == b"content-type":
                content_type = value
            elif lower == b"content-length" and value.isdigit():
                length = int(value)
            headers.append((name, value))
        if self._capture is not None:
            self._capture.start(status, headers)
        if self._billable is not None and status not in self._billable:
            self.refund = True  # not billed: neither the call nor any records
        elif counted is not None:
            self.records = counted
        elif (
            counting.count_json is not None
            and is_json(content_type)
            and not self._head
            and status not in _NO_BODY
            and length != 0
        ):
            if length is not None and length > counting.max_body:
                self._stream = StreamCounter(counting.json_field)
            else:
                self._buffer = []
        headers += self.metered
        # A copy: the app may keep its message (a response object sent twice).
        started = dict(message)
        started["headers"] = headers
        return started

    async def _body(self, message: Message) -> None:
        more = message.get("more_body", False)
        chunk = message.get("body", b"")
        if self._capture is not None:
            self._capture.body(chunk, more)
        buffer = self._buffer
        if buffer is not None:
            buffer.append(chunk)
            self._buffered += len(chunk)
            if self._buffered > self._counting.max_body:
                # Too large to hold: count the rest as it streams past, holding nothing back.
                body, self._buffer = b"".join(buffer), None
                self._stream = StreamCounter(self._counting.json_field)
                await self._streamed(body, more)
                return
            if more:
                return
            body, self._buffer = b"".join(buffer), None
            self._counted(body)
            await self._finish()
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if self._stream is not None:
            await self._streamed(chunk, more)
            return
        if not more:
            await self._finish()
        await self._send(message)

    def _counted(self, body: bytes) -> None:
        count_json = self._counting.count_json
        count = count_json(body) if body and count_json is not None else 0
        if count is None:
            self.uncounted = "a body labelled JSON that is not valid JSON"
        else:
            self.records = count

    async def _streamed(self, chunk: bytes, more: bool) -> None:
        stream = self._stream
        assert stream is not None
        stream.feed(chunk)
        if not more:
            self._stream = None
            count = stream.end()
            if count is None:
                self.uncounted = "a JSON body over records.max_body_bytes whose structure is not JSON's"
            else:
                self.records = count
            await self._finish()
        await self._send({"type": "http.response.body", "body": chunk, "more_body": more})

    def failed(self) -> None:
        """The app raised. Before its response started, the client gets a 500 from the server (or
        an outer error middleware): billed only where the plan bills 500."""
        if not self.started and self._billable is not None and 500 not in self._billable:
            self.refund = True

    async def close(self) -> None:
        """After the app returned or raised: settle what the last body chunk did not."""
        if self.settled:
            return
        if (self._buffer is not None and self._buffered) or self._stream is not None:
            # The app stopped or the client left mid-body: what was read cannot be counted.
            self._buffer = self._stream = None
            self.uncounted = "a JSON body that never ended"
        if self.records or self.refund or self.uncounted:
            # The records header came (or the app failed, or the client left) before the last
            # chunk: records produced are billed, a refund is given, and an uncounted body shown.
            await self._finish()

    async def _finish(self) -> None:
        later = self._settle()
        if later is not None:
            await self._settle_later(later)

    def _settle(self) -> Settlement | None:
        """Settle, once: here when that needs no I/O (the memory store, the fast path); else the
        settlement to hand to the store (:meth:`_settle_later`)."""
        if self.settled:
            return None
        self.settled = True
        if self._unresolved is not None:
            self._unresolved.records = self.records
            return None
        ticket = self.ticket
        if ticket is None:
            return None
        uncounted = 0
        if self.uncounted and not self.refund:
            uncounted = 1
            log.warning(
                "records not counted for customer %s on route %s: %s (shown as uncounted in the usage; "
                "an app that knows its count can send it in the %s header)",
                ticket.customer, ticket.route, self.uncounted, self._counting.header.decode(),
            )  # fmt: skip
            self._metrics.not_counted(self._plan)
        records, refund = self.records, self.refund
        if not (records or refund or uncounted):
            return None
        if not refund:
            self._metrics.billed(self._plan, records)
        return self._engine.settle_now(ticket, records, refund=refund, uncounted=uncounted)

    async def _settle_later(self, settlement: Settlement) -> None:
        """A client disconnect cancels the request, not the write: every store completes a
        settlement once handed to it (the Redis store runs it in a batch task of its own)."""
        try:
            await self._engine.settle_later(settlement)
        except StoreError:
            log.exception("could not settle %d records of customer %s", settlement.records, settlement.customer)
