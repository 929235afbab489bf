"""Settings from the environment, and the few Redis calls the harnesses make on the shared server."""

from __future__ import annotations

import os
import secrets
from typing import Any

from .arms import ARMS

# Every knob is an environment variable, so that `make bench` takes them as they are.
REDIS_URL = os.environ.get("MG_BENCH_REDIS", "redis://127.0.0.1:6379/0")
CONCURRENCY = 32


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def selected_arms() -> list[str]:
    """MG_BENCH_ARMS=mg-exact,slowapi runs a subset; ``bare`` is always run, every ratio needs it
    (and ``mg-exact`` with ``mg-serve``)."""
    wanted = [arm.strip() for arm in os.environ.get("MG_BENCH_ARMS", "").split(",") if arm.strip()]
    unknown = [arm for arm in wanted if arm not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {', '.join(unknown)}; arms: {', '.join(ARMS)}")
    if "mg-serve" in wanted:
        wanted.append("mg-exact")  # what mg-serve is compared with: the same gateway under plain uvicorn
    return [arm for arm in ARMS if not wanted or arm in wanted or arm == "bare"]


def new_prefix() -> str:
    """A key prefix of this run alone: every key the run writes starts with it."""
    return f"bench-{secrets.token_hex(4)}"


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL, decode_responses=True)


def command_calls(client: Any) -> dict[str, int]:
    """``INFO commandstats`` as ``{command: calls}``."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(fields["calls"]) for name, fields in stats.items()}


def redis_cpu_seconds(client: Any) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def delete_prefix(client: Any, prefix: str) -> int:
    """Delete the keys of this run only (SCAN + UNLINK); never FLUSHDB on a shared server."""
    deleted = 0
    batch: list[str] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted
