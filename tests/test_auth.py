"""Credentials (auth.py, CONTRACT 11): one credential per request, bounded in size, caches bounded in bytes."""

from __future__ import annotations

import gc
import os
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from meterguard import MeterGuard, auth, parse_config
from meterguard.keys import generate_key
from meterguard.store.memory import MemoryStore

from .support import SEEN, data_app
from .wave import Gateway

SECRET = "a-test-secret-of-sufficient-length-for-hs256"
PLANS = """
version: 1
auth:
  failed_limit: null   # these tests are about credentials, not the throttle (test_throttle.py)
plans:
  free: {rate_limits: ["1000/minute"]}
"""
PROBLEMS = "https://meterguard.dev/problems/"


def jwt_plans(extra: str = "") -> str:
    return f"""
version: 1
auth:
  failed_limit: null
  jwt: {{algorithms: [HS256], key_env: MG_TEST_AUTH_SECRET}}
{extra}
plans:
  free: {{rate_limits: ["1000/minute"]}}
customers:
  acme: {{plan: free}}
"""


class CountingStore(MemoryStore):
    """Counts key lookups: a refusal that needs none must make none."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def find_key(self, key_hash: str) -> Any:
        self.lookups += 1
        return await super().find_key(key_hash)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[httpx.AsyncClient, MeterGuard, CountingStore]]:
    store = CountingStore()
    guard = MeterGuard(data_app, config=parse_config(PLANS), store=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
        yield client, guard, store


async def customer_key(guard: MeterGuard, name: str) -> str:
    await guard.directory.create(name, "free")
    return (await guard.directory.issue_key(name))[1]


def assert_401(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == PROBLEMS + "unauthenticated"
    assert detail.lower() in response.json()["detail"].lower()


# -- two credentials ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda a, b: [("x-api-key", a), ("x-api-key", b)], id="two-x-api-keys"),
        pytest.param(lambda a, b: [("authorization", f"Bearer {a}"), ("authorization", f"Bearer {b}")], id="two-auth"),
        pytest.param(lambda a, b: [("x-api-key", a), ("authorization", f"Bearer {b}")], id="key-and-other-bearer"),
        pytest.param(lambda a, b: [("authorization", f"Bearer {b}"), ("x-api-key", a)], id="bearer-then-key"),
        pytest.param(
            lambda a, b: [("authorization", f"Bearer {a}"), ("authorization", "Basic dTpw")], id="bearer-basic"
        ),
    ],
)
async def test_two_different_credentials_are_ambiguous(gateway: Any, headers: Any) -> None:
    """Before (18c8b91): 200 for two-x-api-keys (the first won), two-auth (the last won) and
    key-and-other-bearer (the key won); the request was served as one of two customers."""
    client, guard, _ = gateway
    alice, bob = await customer_key(guard, "alice"), await customer_key(guard, "bob")
    SEEN.clear()
    response = await client.get("/v1/posts/1", headers=headers(alice, bob))
    assert_401(response, "ambiguous credentials")
    assert SEEN == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda k: [("x-api-key", k), ("x-api-key", k)], id="key-twice"),
        pytest.param(lambda k: [("authorization", f"Bearer {k}"), ("authorization", f"Bearer {k}")], id="auth-twice"),
        pytest.param(lambda k: [("x-api-key", k), ("authorization", f"Bearer {k}")], id="key-and-same-bearer"),
        pytest.param(lambda k: [("x-api-key", f"  {k} "), ("authorization", f"bearer {k}")], id="spacing-and-case"),
        pytest.param(lambda k: [("x-api-key", k), ("authorization", "Basic dTpw")], id="key-and-basic"),
        pytest.param(lambda k: [("x-api-key", ""), ("authorization", f"Bearer {k}")], id="empty-key-header"),
    ],
)
async def test_the_same_credential_twice_is_no_ambiguity(gateway: Any, headers: Any) -> None:
    client, guard, _ = gateway
    key = await customer_key(guard, "alice")
    assert (await client.get("/v1/posts/1", headers=headers(key))).status_code == 200


# -- size ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["x-api-key", "authorization"])
async def test_an_oversized_credential_is_refused_before_it_is_read(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setenv("MG_TEST_AUTH_SECRET", SECRET)
    decoded: list[str] = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda token, *a, **k: decoded.append(token) or real_decode(token, *a, **k))
    store = CountingStore()
    guard = MeterGuard(data_app, config=parse_config(jwt_plans()), store=store)
    token = jwt.encode({"sub": "acme", "exp": 2**40, "pad": "x" * 5000}, SECRET, algorithm="HS256")
    assert len(token) > 4096
    value = token if where == "x-api-key" else f"Bearer {token}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
        assert_401(await client.get("/v1/posts/1", headers={where: value}), "larger than 4096 bytes")
        oversized_key = generate_key() + "A" * 5000
        assert_401(await client.get("/v1/posts/1", headers={"x-api-key": oversized_key}), "larger than 4096 bytes")
        small = jwt.encode({"sub": "acme", "exp": 2**40}, SECRET, algorithm="HS256")
        assert (await client.get("/v1/posts/1", headers={"authorization": f"Bearer {small}"})).status_code == 200
    assert decoded == [small]  # the large token was never handed to PyJWT
    assert store.lookups == 0


async def test_the_bound_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_TEST_AUTH_SECRET", SECRET)
    guard = MeterGuard(
        data_app,
        config=parse_config(
            jwt_plans().replace("failed_limit: null", "failed_limit: null\n  max_credential_bytes: 16384")
        ),
    )
    token = jwt.encode({"sub": "acme", "exp": 2**40, "pad": "x" * 5000}, SECRET, algorithm="HS256")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
        assert (await client.get("/v1/posts/1", headers={"authorization": f"Bearer {token}"})).status_code == 200


# -- memory --------------------------------------------------------------------------------------------


async def test_the_cache_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """300 distinct 60 KB junk tokens, each a cached failure. Before: bounded in entries only
    (10,000), so 18 MB here and 10 GB at 1 MB a token."""
    monkeypatch.setenv("MG_TEST_AUTH_SECRET", SECRET)
    config = parse_config(
        jwt_plans().replace("failed_limit: null", "failed_limit: null\n  max_credential_bytes: 65536")
    )
    guard = MeterGuard(data_app, config=config, store=MemoryStore())
    authenticator = guard.authenticator
    for index in range(300):
        junk = f"{index:06d}" + "a" * 30_000 + "." + "b" * 30_000 + ".c"
        result = await authenticator.authenticate(junk)
        assert isinstance(result, auth.AuthFailure)
    held = sum(len(credential) for credential in authenticator._cache)
    assert held <= auth.CACHE_BYTES
    assert authenticator._cache_bytes == held + auth.ENTRY_OVERHEAD * len(authenticator._cache)
    assert len(authenticator._cache) < 300  # the oldest went


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def junk_token(index: int) -> str:
    return f"{index:06d}" + "a" * 500_000 + "." + "b" * 500_000 + ".c"  # 1 MB, JWT-shaped


def send_junk(port: int, first: int, count: int) -> list[bytes]:
    statuses = []
    for index in range(first, first + count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = "GET /v1/posts/1 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n"
            sock.sendall(f"{head}authorization: Bearer {junk_token(index)}\r\n\r\n".encode())
            statuses.append(sock.recv(12)[9:12])
    return statuses


def test_junk_megabyte_tokens_leave_the_gateway_rss_where_it_was(tmp_path: Path) -> None:
    """300 distinct JWT-shaped tokens of 1 MB, sent to a real gateway process (meterguard serve,
    uvicorn) with the throttle off, the worst case. Before (18c8b91): its RSS went from 75 MB to
    373 MB and stayed (every failure was cached under the whole token); run against that code,
    this harness measured 66.9 -> 353.1 MiB. Now they are refused by size, before any cache or parser."""
    config = tmp_path / "plans.yaml"
    config.write_text(
        jwt_plans().replace("version: 1", 'version: 1\nroutes:\n  - {match: "GET /health", public: true}')
    )
    with Gateway("tests.support:data_app", config, "memory://", 1, env={"MG_TEST_AUTH_SECRET": SECRET}) as gateway:
        assert gateway.process is not None
        assert set(send_junk(gateway.port, 0, 10)) == {b"401"}  # warm up: first requests, allocator arenas
        time.sleep(0.2)
        before = rss_bytes(gateway.process.pid)
        assert set(send_junk(gateway.port, 10, 300)) == {b"401"}
        time.sleep(0.2)
        after = rss_bytes(gateway.process.pid)
    print(f"gateway RSS before {before / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB")
    assert after - before < 20 * 2**20, f"RSS grew by {(after - before) / 2**20:.1f} MiB"


@pytest.mark.parametrize(
    "throttle", ["failed_limit: null", 'failed_limit: "60/minute"'], ids=["no-throttle", "throttle"]
)
async def test_junk_megabyte_tokens_leave_nothing_behind_in_process(
    monkeypatch: pytest.MonkeyPatch, throttle: str
) -> None:
    """The same flood in-process, measured by tracemalloc (what Python still holds, whatever the
    allocator keeps): this process's RSS depends on the tests that ran before it."""
    monkeypatch.setenv("MG_TEST_AUTH_SECRET", SECRET)
    guard = MeterGuard(data_app, config=parse_config(jwt_plans().replace("failed_limit: null", throttle)))
    transport = httpx.ASGITransport(app=guard)

    async def flood(count: int, start: int) -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for index in range(start, start + count):
                response = await client.get("/v1/posts/1", headers={"authorization": f"Bearer {junk_token(index)}"})
                assert response.status_code in (401, 429)

    await flood(10, 0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await flood(300, 10)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2 * 2**20, f"{held / 2**20:.1f} MiB still held"
    assert guard.authenticator._cache_bytes <= auth.CACHE_BYTES
