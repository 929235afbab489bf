"""The ``mg-serve`` arm of ``make bench`` starts, serves metered requests and reports its Redis commands.

Not a benchmark: one real server of the arm, a few requests, no timing asserted. Without the
SIGUSR1 handler of benchmarks/serve_target.py the driver's first count request would kill the
server (SIGUSR1's default action), and without its customers the keys would all be 401.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from benchmarks import _common, http
from benchmarks.arms import PATH

from .conftest import REDIS_URL, drop_keys


def test_the_arm_serves_metered_requests_and_counts_commands(
    tmp_path: Path, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MG_BENCH_REDIS", REDIS_URL)
    server = http._Server("mg-serve", key_prefix, 4, tmp_path)
    try:
        keys = server.wait_ready()
        assert len(keys) == 4
        before = server.commands_sent()
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
            for key in keys:
                response = client.get(PATH, headers={"x-api-key": key})
                assert response.status_code == 200, response.text
                assert response.headers["ratelimit-policy"]  # metered by meterguard, not served bare
        after = server.commands_sent()
        assert sum(after.values()) > sum(before.values())
        assert server.proc.poll() is None
        log = server.log_tail(50)
        assert "GET /v1/records" not in log, "no access log: the same uvicorn flags as the other arms"
    finally:
        server.stop()
        asyncio.run(drop_keys(REDIS_URL, f"{key_prefix}-mg-serve"))


def test_mg_serve_brings_mg_exact_along(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_BENCH_ARMS", "mg-serve")
    assert _common.selected_arms() == ["bare", "mg-exact", "mg-serve"]
