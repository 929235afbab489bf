"""Settings from the environment, the run's own Redis server, and the few Redis calls the harnesses make."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .arms import ARMS

CONCURRENCY = 32
# Set by the caller to use an existing server; unset, `python -m benchmarks` starts one of its own
# (private_redis) and sets it, so that the serving subprocesses inherit it.
REDIS_ENV = "MG_BENCH_REDIS"
SHARED_REDIS = "redis://127.0.0.1:6379/0"

COMPILED = "mypyc"  # the arms' suffix for this tree compiled by mypyc (mg-memory@mypyc), MG_BENCH_COMPILED


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def redis_url() -> str:
    return os.environ.get(REDIS_ENV) or SHARED_REDIS


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


@contextmanager
def private_redis() -> Iterator[str | None]:
    """A redis-server of the run's own, unless MG_BENCH_REDIS names one: yields its URL (None when named).

    Redis CPU and operations per request are read from the server's INFO: on a server that other
    clients use (the test suites of a shared machine) they would count those clients' work too,
    and ``CONFIG RESETSTAT`` would reset their statistics. Same persistence as ``make redis``'s
    server (``save ""``, ``appendonly no``).
    """
    if os.environ.get(REDIS_ENV):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="mg-bench-redis-") as workdir, redis_server(workdir) as (url, _):
        os.environ[REDIS_ENV] = url
        try:
            yield url
        finally:
            os.environ.pop(REDIS_ENV, None)


@contextmanager
def redis_server(
    workdir: str, *, wrapper: Sequence[str] = (), ready_within: float = 10.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server on a free port with its files in ``workdir``, run under ``wrapper`` (valgrind,
    for benchmarks/redis_cost.py) when given: (URL, its process), stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: `make redis` installs it (or set MG_BENCH_REDIS)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    url = f"redis://127.0.0.1:{port}/0"
    log = Path(workdir) / "redis.log"
    command = [*wrapper, binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", workdir, "--logfile", str(log)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_for(url, server, log, ready_within)
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)  # under callgrind, the server writes its profile first
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_for(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    import redis

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"redis-server exited with {server.returncode}: {log.read_text(errors='replace')}")
        try:
            # A server under valgrind may take seconds to answer its first PING.
            with redis.Redis.from_url(url, socket_timeout=max(1.0, timeout / 12)) as client:
                client.ping()
                return
        except (redis.ConnectionError, redis.TimeoutError):  # not listening yet, or still loading
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer {url} within {timeout:.0f} s")


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(redis_url(), decode_responses=True)


def command_calls(client: Any) -> dict[str, int]:
    """``INFO commandstats`` as ``{command: calls}`` (subcommands as ``config|resetstat``)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(fields["calls"]) for name, fields in stats.items()}


def redis_cpu_seconds(client: Any) -> float:
    """``used_cpu_user + used_cpu_sys`` of ``INFO cpu``: every thread of the server, since it started."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


class RedisWindow:
    """What the Redis server did between ``open`` and ``close``: CPU seconds, and commands by name.

    ``open`` resets the server's statistics (``CONFIG RESETSTAT``) and reads its CPU; ``close``
    reads ``INFO commandstats`` then the CPU again. Redis counts a command after it ran, so the
    window's own commands in commandstats are exactly the RESETSTAT and the first ``INFO cpu``
    (an INFO does not count itself): both are taken out. What remains includes every
    ``redis.call`` made inside a script.
    """

    OWN = {"config|resetstat": 1, "info": 1}

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cpu = 0.0

    def open(self) -> None:
        self.client.config_resetstat()
        self.cpu = redis_cpu_seconds(self.client)

    def close(self) -> tuple[float, dict[str, int]]:
        calls = command_calls(self.client)
        cpu = redis_cpu_seconds(self.client) - self.cpu
        for name, count in self.OWN.items():
            calls[name] = calls.get(name, 0) - count
        return cpu, {name: count for name, count in sorted(calls.items()) if count > 0}


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
