"""How many records a response returned: from the app's header, or the top-level JSON array.

Counts come from the application, which may be buggy or compromised: anything but a plain
non-negative integer of sane size is refused and logged (LANDSCAPE: negative, NaN, bool,
huge or string counts), never trusted and never allowed to crash the request.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("meterguard.records")

MAX_RECORDS_PER_RESPONSE = 10**9


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


def count_json(body: bytes, field: str) -> int:
    """Length of the top-level array ``field`` of a JSON object body; 0 for anything else."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return 0
    if isinstance(document, dict):
        value = document.get(field)
        if isinstance(value, list):
            return len(value)
    return 0
