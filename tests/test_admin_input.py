"""Admin API input (issue 9): bounded bodies, problem+json for every error, no 500, no redirect out of the prefix."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from meterguard import MeterGuard, parse_config
from meterguard.admin import MAX_BODY_BYTES
from meterguard.store.memory import MemoryStore

from .support import data_app

TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PROBLEMS = "https://meterguard.dev/problems/"
PLANS = """
version: 1
plans:
  free: {rate_limits: ["1000/minute"]}
  pro:
    quotas: {calls: 10}
    overage: {calls: {unit: 1, price: "1.00"}, spend_cap: "100.00"}
"""


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    guard = MeterGuard(data_app, config=parse_config(PLANS), store=MemoryStore())
    transport = httpx.ASGITransport(app=guard, raise_app_exceptions=False)  # a 500 must show as a 500
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        response = await client.post("/_meterguard/customers", headers=ADMIN, json={"id": "acme", "plan": "pro"})
        assert response.status_code == 201
        yield client


def problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert (body["type"], body["status"]) == (PROBLEMS + kind, status)
    return body


# -- bodies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[" * 50_000, id="list-50000-deep"),
        pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, id="object-10000-deep"),
        pytest.param(b'{"id": "x", "plan": {"a": [[[[[[[[[[1]]]]]]]]]]}}', id="deep-inside-a-field"),
    ],
)
async def test_deeply_nested_bodies_are_400_not_500(client: httpx.AsyncClient, raw: bytes) -> None:
    """Before (18c8b91): json.loads raised RecursionError, answered 500."""
    for method, url in (("POST", "/_meterguard/customers"), ("PATCH", "/_meterguard/customers/acme")):
        response = await client.request(method, url, headers={**ADMIN, "content-type": "application/json"}, content=raw)
        body = problem(response, 400, "invalid-request")
        assert "nested deeper" in body["detail"]


async def test_brackets_inside_strings_do_not_count_as_nesting(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_meterguard/customers", headers=ADMIN, json={"id": "brackets", "plan": "free", "note": "[[[[[[[[[[[[[[[["}
    )
    problem(response, 422, "invalid-request")  # refused for its unknown field, not for its depth
    assert response.json()["errors"] == [{"field": "note", "reason": "unknown field"}]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'"' + b'\\"' * 30_000, id="unterminated-string-of-escaped-quotes"),
        pytest.param(b'"\\' * 20_000, id="unterminated-string-of-backslashes"),
        pytest.param(b'["' * 30_000, id="open-strings-and-lists"),
        pytest.param(b"[" * 60_000, id="lists"),
    ],
)
async def test_hostile_bodies_are_answered_quickly(client: httpx.AsyncClient, raw: bytes) -> None:
    """The nesting check's first version matched whole strings with a regular expression, which
    backtracked over an unterminated one: 30 s for the first of these. Now one linear pass."""
    started = time.perf_counter()
    response = await client.post(
        "/_meterguard/customers", headers={**ADMIN, "content-type": "application/json"}, content=raw
    )
    assert time.perf_counter() - started < 1.0
    problem(response, 400, "invalid-request")


@pytest.mark.parametrize(
    ("cap", "reason"),
    [
        ("1e30", "not a plain decimal amount"),
        ("1_000", "not a plain decimal amount"),
        ("NaN", "must be a finite amount"),
        ("Infinity", "must be a finite amount"),
        ("-5", "must be a finite amount >= 0"),
        ("+5", "not a plain decimal amount"),
        ("1000000000.00", "too large"),
        ("1.005", "more than 2 decimal places"),
        ("", "is not a decimal amount"),
    ],
)
async def test_absurd_spend_caps_are_422_not_500(client: httpx.AsyncClient, cap: str, reason: str) -> None:
    """Before (18c8b91): "1e30" was a 500 (InvalidOperation) and "1_000" was taken as 1000."""
    response = await client.patch("/_meterguard/customers/acme", headers=ADMIN, json={"spend_cap": cap})
    body = problem(response, 422, "invalid-request")
    assert [error["field"] for error in body["errors"]] == ["spend_cap"]
    assert reason in body["errors"][0]["reason"]
    customer = (await client.get("/_meterguard/customers/acme", headers=ADMIN)).json()
    assert customer["spend_cap"] is None


async def test_a_plain_spend_cap_is_taken(client: httpx.AsyncClient) -> None:
    response = await client.patch("/_meterguard/customers/acme", headers=ADMIN, json={"spend_cap": "1000.50"})
    assert response.status_code == 200 and response.json()["spend_cap"] == "1000.50"


@pytest.mark.parametrize("raw", [b'{"id": "x", "plan": "free", "anchor_day": NaN}', b'{"id": Infinity}', b"-Infinity"])
async def test_json_that_only_python_reads_is_400(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/_meterguard/customers", headers={**ADMIN, "content-type": "application/json"}, content=raw
    )
    problem(response, 400, "invalid-request")


async def test_an_oversized_body_with_a_content_length_is_a_413_problem(client: httpx.AsyncClient) -> None:
    """Before (18c8b91): a plain-text 413."""
    big = b'{"id": "' + b"a" * MAX_BODY_BYTES + b'"}'
    for method, url in (
        ("POST", "/_meterguard/customers"),
        ("PATCH", "/_meterguard/customers/acme"),
        ("POST", "/_meterguard/customers/acme/keys"),
        ("GET", "/_meterguard/customers"),  # even where no body is read
    ):
        response = await client.request(method, url, headers=ADMIN, content=big)
        assert "content-length" in {name.lower() for name in response.request.headers}
        body = problem(response, 413, "invalid-request")
        assert str(MAX_BODY_BYTES) in body["detail"]


async def test_an_oversized_chunked_body_is_a_413_problem(client: httpx.AsyncClient) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b"a" * 8192

    response = await client.post("/_meterguard/customers", headers=ADMIN, content=chunks())
    assert "content-length" not in {name.lower() for name in response.request.headers}
    problem(response, 413, "invalid-request")


@pytest.mark.parametrize("length", ["abc", "-1", "1" * 30])
async def test_a_content_length_that_is_no_length_is_a_413_problem(client: httpx.AsyncClient, length: str) -> None:
    response = await client.post("/_meterguard/customers", headers={**ADMIN, "content-length": length}, content=b"{}")
    problem(response, 413, "invalid-request")


# -- paths -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/_meterguard/customers/", "/_meterguard/customers/acme/", "/_meterguard/customers/acme/keys/"]
)
async def test_a_trailing_slash_is_a_404_problem_not_a_redirect(client: httpx.AsyncClient, path: str) -> None:
    """Before (18c8b91): 307 to http://host/customers, outside the admin prefix. Now a 404 that says why."""
    response = await client.get(path, headers=ADMIN)
    body = problem(response, 404, "not-found")
    assert "location" not in response.headers
    assert "no trailing slash" in body["detail"]


async def test_every_admin_error_is_a_problem(client: httpx.AsyncClient) -> None:
    problem(await client.get("/_meterguard/customers"), 401, "unauthenticated")
    problem(await client.get("/_meterguard/nothing-here", headers=ADMIN), 404, "not-found")
    problem(await client.put("/_meterguard/customers", headers=ADMIN), 405, "method-not-allowed")
    problem(await client.get("/_meterguard/customers/nobody", headers=ADMIN), 404, "customer-not-found")
    problem(await client.post("/_meterguard/customers", headers=ADMIN, content=b"{"), 400, "invalid-request")
    problem(await client.post("/_meterguard/customers", headers=ADMIN, json=[]), 400, "invalid-request")
    problem(
        await client.post("/_meterguard/customers", headers=ADMIN, json={"id": "acme", "plan": "free"}),
        409,
        "customer-exists",
    )
    problem(
        await client.post("/_meterguard/customers/acme/keys", headers=ADMIN, content=b"[1]"), 400, "invalid-request"
    )


@pytest.mark.parametrize("days", ["1" * 5000, "0" * 4400 + "7", "99999", "-1", "7.0", "\u0661"])
async def test_days_past_what_int_reads_is_400(client: httpx.AsyncClient, days: str) -> None:
    """Found by test_properties.py: int() raises ValueError past 4,300 digits, and that was a 500."""
    response = await client.get("/_meterguard/customers/acme/usage/daily", headers=ADMIN, params={"days": days})
    problem(response, 400, "invalid-request")
