"""How fast each JSON parser counts a response's records (records.py chose msgspec, typed).

    .venv/bin/pip install orjson   # not a dependency: measured only
    .venv/bin/python -m benchmarks.records_decode

Bodies: 10 records (about 2 KB, the benchmark arms' body size) and 11,600 records (2.4 MB, the
size the first-time user's uncounted response had), each as ``{"data": [...], "meta": ...}``
and as a top-level array. Each parser counts what records.py counts; the figure is the best of
7 rounds (the least disturbed by other work on a shared machine), in microseconds per body.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from typing import Any

from meterguard.records import counter, json_counter


def records(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": str(1_800_000_000_000_000_000 + i),
            "text": f'post number {i} about redis, [brackets] and "quotes"',
            "author_id": 1000 + i,
            "created_at": "2026-11-10T12:00:00Z",
            "metrics": {"likes": i % 97, "reposts": i % 13},
            "tags": ["redis", "asgi"],
        }
        for i in range(n)
    ]


def bodies() -> dict[str, bytes]:
    small, large = records(10), records(11_600)
    return {
        "10 records, object": json.dumps({"data": small, "meta": {"result_count": 10}}).encode(),
        "10 records, array": json.dumps(small).encode(),
        "11,600 records, object": json.dumps({"data": large, "meta": {"result_count": 11_600}}).encode(),
        "11,600 records, array": json.dumps(large).encode(),
    }


def parsers() -> dict[str, Callable[[bytes], int | None]]:
    def whole(loads: Callable[[bytes], Any]) -> Callable[[bytes], int | None]:
        def count(body: bytes) -> int | None:
            document = loads(body)
            if isinstance(document, list):
                return len(document)
            value = document.get("data") if isinstance(document, dict) else None
            return len(value) if isinstance(value, list) else 0

        return count

    found: dict[str, Callable[[bytes], int | None]] = {"json (stdlib)": json_counter("data")}
    try:
        import orjson

        found["orjson"] = whole(orjson.loads)
    except ImportError:
        pass
    import msgspec

    found["msgspec, untyped"] = whole(msgspec.json.decode)
    found["msgspec, typed (records.py)"] = counter("data")
    return found


def main() -> None:
    cases = bodies()
    counters = parsers()
    print(f"{'body':<24} {'bytes':>9}  " + "  ".join(f"{name:>28}" for name in counters))
    for label, body in cases.items():
        number = 2000 if len(body) < 100_000 else 10
        cells = []
        for count in counters.values():
            assert count(body) == (10 if label.startswith("10 ") else 11_600)
            best = min(timeit.repeat(lambda c=count, b=body: c(b), number=number, repeat=7)) / number
            cells.append(f"{best * 1e6:>25.1f} us")
        print(f"{label:<24} {len(body):>9}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
