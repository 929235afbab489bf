"""How many records a response returned: from the app's header, or the JSON body.

Counts come from the application, which may be buggy or compromised: anything but a plain
non-negative integer of sane size is refused and logged (LANDSCAPE: negative, NaN, bool,
huge or string counts), never trusted and never allowed to crash the request.

A JSON body is counted as CONTRACT section 11 says: the array ``records.json_field`` of a
top-level object, or a top-level array itself (FastAPI's ``return [...]``). The parse is
msgspec's, typed so that it builds no Python object for a record: the document is checked
whole (syntax, nesting, trailing bytes) and the array's items are kept as raw byte spans, of
which only the number is read. Measured on 2 shared cores (``python -m
benchmarks.records_decode``, best of 7; ranges over two runs), for a 2.2 KB body of 10 records:
json 25-33 us, orjson 7-13 us, msgspec untyped 8-12 us, msgspec typed 2.5-4.3 us; for a 2.6 MB
body of 11,600 records: json 28-52 ms, orjson 16-26 ms, msgspec untyped 17-31 ms, msgspec typed
2.2-3.8 ms. orjson and untyped msgspec build every record as a dict, which is what costs; only
msgspec can skip that. The standard library's ``json`` is used only where msgspec cannot be
imported. Bodies over ``records.max_body_bytes`` are not held: :class:`StreamCounter` counts
them chunk by chunk as they pass.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger("meterguard.records")

MAX_RECORDS_PER_RESPONSE = 10**9
MAX_PENDING_BYTES = 1 << 20  # a top-level token held across chunks (a long key or string value)

_WS = b" \t\r\n"
_NOT_SKELETON = bytes(sorted(set(range(256)) - set(b'"[]{},')))
_QUOTED = re.compile(rb'"[^"]*"')  # a string, once escaped quotes are gone
_INNER = re.compile(rb"\[,*\]|\{,*\}")  # a group holding nothing but its commas: a whole element
_TOKEN = re.compile(rb'\s*(?:("[^"\\]*(?:\\.[^"\\]*)*")|([\[\]{},:])|([^\s\[\]{},:"]+))')

#: counts the records of a JSON body: an int, or None when the body is not valid JSON
Counter = Callable[[bytes], "int | None"]


def parse_header(value: bytes) -> int | None:
    """The value of the records header, or None (and a log line) when it is not a sane count."""
    text = value.strip()
    if text.isdigit() and len(text) <= 10:
        count = int(text)
        if count <= MAX_RECORDS_PER_RESPONSE:
            return count
    log.warning("ignoring an invalid records header value %r", value[:40])
    return None


def is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def counter(field: str) -> Counter:
    """A counter for ``field``, built once per configuration (the decoder is compiled for it)."""
    try:
        import msgspec
    except ImportError:  # pragma: no cover - msgspec is a dependency; kept for odd platforms
        return json_counter(field)
    return _msgspec_counter(msgspec, field)


def _msgspec_counter(msgspec: Any, field: str) -> Counter:
    # Every JSON value type is allowed for the field, so that a document whose field is not an
    # array is still checked whole (and counts 0) rather than stopping at the first mismatch.
    value = list[msgspec.Raw] | dict[str, msgspec.Raw] | str | int | float | bool | None
    document = msgspec.defstruct(
        "Document", [("items", value, None)], rename={"items": field}, forbid_unknown_fields=False
    )
    decoder = msgspec.json.Decoder(document | list[msgspec.Raw])
    decode_error = msgspec.DecodeError
    validation_error = msgspec.ValidationError

    def count(body: bytes) -> int | None:
        try:
            parsed = decoder.decode(body)
        except validation_error:
            return 0  # valid JSON, but a string or a number at the top: no records
        except (decode_error, RecursionError):  # msgspec stops at a nesting deeper than the C stack allows
            return None
        if isinstance(parsed, list):
            return len(parsed)
        items = parsed.items
        return len(items) if isinstance(items, list) else 0

    return count


def json_counter(field: str) -> Counter:
    """The same count with the standard library (slower: it builds every record as a dict)."""

    def count(body: bytes) -> int | None:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if isinstance(document, list):
            return len(document)
        if isinstance(document, dict):
            value = document.get(field)
            if isinstance(value, list):
                return len(value)
        return 0

    return count


class StreamCounter:
    """Counts the records of a JSON body as it streams past, for bodies over ``records.max_body_bytes``:
    nothing is buffered, and nothing goes uncounted for being large.

    The same count as :func:`counter` (a property test holds the two equal on generated documents
    cut at random places), but from the document's structure rather than a full parse: before
    the counted array, the top level is tokenized; inside it, each chunk is reduced to its
    skeleton (escapes dropped, then every byte but quotes, brackets and commas, then the strings)
    and nested elements are folded away, so that the commas left are the array's own. All of it
    is bytes methods and regular expressions, 130-140 MB/s here (2.4 MB of records in 18 ms, in
    64 KiB chunks), against msgspec's 1 GB/s on a body held whole. What is not checked: the rest
    of the document once the array has ended, and tokens inside the array (a malformed number
    still counts as an item). A body whose structure breaks, or that ends first, reads None.
    """

    def __init__(self, field: str) -> None:
        self.field = field
        self.count = 0
        self.state = "start"  # start | object | array (the counted one) | after | done | bad
        self.pending = b""  # the head of a token cut by a chunk's end (top-level parsing)
        self.depth = 0  # top-level object: nesting of a value being skipped
        self.expect = "key"  # top-level object: key | colon | value | comma
        self.key: str | None = None
        # inside the counted array
        self.in_string = False
        self.backslashes = b""
        self.open = b""  # brackets of the element still open
        self.commas = 0
        self.seen = False  # the array holds anything

    def feed(self, chunk: bytes) -> None:
        while chunk and self.state not in ("done", "bad"):
            if self.state == "array":
                chunk = self._array(chunk)
            else:
                chunk = self._top(chunk)

    def end(self) -> int | None:
        if self.state == "start" and self.pending:
            try:  # a document that is one literal: no records, if it is one
                json.loads(self.pending)
            except ValueError:
                return None
            return 0
        if self.state == "done":
            return self.count
        if self.state == "after":
            return 0
        return None

    # the counted array --------------------------------------------------------------------------

    def _array(self, chunk: bytes) -> bytes:
        if not self.seen:
            stripped = chunk.lstrip(_WS)
            if not stripped:
                return b""
            if stripped[:1] == b"]":
                self.count = 0
                self.state = "done"
                return b""
            self.seen = True
        data = self.backslashes + chunk
        if data.endswith(b"\\"):
            kept = data.rstrip(b"\\")
            self.backslashes, data = data[len(kept) :], kept
        else:
            self.backslashes = b""
        if b"\\" in data:  # escapes only live in strings: an escaped quote is no quote
            data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
        skeleton = (b'"' if self.in_string else b"") + data.translate(None, _NOT_SKELETON)
        skeleton = skeleton.replace(b'""', b"")  # strings holding no brackets or commas: most of them
        if b'"' in skeleton:
            skeleton = _QUOTED.sub(b"", skeleton)
        quote = skeleton.find(b'"')
        self.in_string = quote >= 0  # a string runs on into the next chunk
        if self.in_string:
            skeleton = skeleton[:quote]
        skeleton = self.open + skeleton
        while True:
            skeleton, n = _INNER.subn(b"", skeleton)
            if not n:
                break
        # what is left: commas of the array, then its end (']') or an element still open
        cut = len(skeleton) - len(skeleton.lstrip(b","))
        self.commas += cut
        rest = skeleton[cut:]
        if rest[:1] == b"]":
            self.count = self.commas + 1
            self.state = "done"
        elif rest[:1] == b"}":
            self.state = "bad"
        else:
            self.open = rest.replace(b",", b"")
        return b""

    # before the counted array ---------------------------------------------------------------------

    def _top(self, chunk: bytes) -> bytes:
        data = self.pending + chunk
        self.pending = b""
        pos = 0
        while pos < len(data):
            token = _TOKEN.match(data, pos)
            if token is None or token.end() == pos:
                if data[pos:].strip(_WS) == b"":
                    return b""
                self.pending = data[pos:]  # an unterminated string or a cut literal
                if len(self.pending) > MAX_PENDING_BYTES:
                    self.state = "bad"  # a key or value before the array that never ends
                return b""
            if token.end() == len(data) and token.group(3):
                self.pending = data[pos:]  # a literal may go on in the next chunk
                return b""
            pos = token.end()
            string, punct = token.group(1), token.group(2)
            if self.state == "start":
                if punct == b"[":
                    self.state = "array"
                    return data[pos:]
                if punct == b"{":
                    self.state = "object"
                    continue
                self.state = "after"  # a scalar document: no records
                return b""
            if self.state == "after":
                continue
            # the top-level object
            if self.depth:
                if punct in (b"[", b"{"):
                    self.depth += 1
                elif punct in (b"]", b"}"):
                    self.depth -= 1
                    if not self.depth:
                        self.expect = "comma"
                continue
            if self.expect == "key":
                if punct == b"}":
                    self.state = "after"
                    return b""
                if string is None:
                    self.state = "bad"
                    return b""
                try:
                    self.key = json.loads(string)
                except ValueError:
                    self.state = "bad"
                    return b""
                self.expect = "colon"
            elif self.expect == "colon":
                if punct != b":":
                    self.state = "bad"
                    return b""
                self.expect = "value"
            elif self.expect == "value":
                if punct == b"[" and self.key == self.field:
                    self.state = "array"
                    return data[pos:]
                if punct in (b"[", b"{"):
                    self.depth = 1
                else:
                    self.expect = "comma"
            else:
                if punct == b",":
                    self.expect = "key"
                elif punct == b"}":
                    self.state = "after"
                    return b""
                else:
                    self.state = "bad"
                    return b""
        return b""
