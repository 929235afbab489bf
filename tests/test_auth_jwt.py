"""Signed JWTs as credentials (RFC 8725): allow-listed algorithms, exp required, iss and aud checked."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from meterguard import MeterGuard, parse_config

from .support import data_app

SECRET = "a-test-secret-of-sufficient-length-for-hs256"
PLANS = """
version: 1
auth:
  jwt:
    algorithms: [{alg}]
    key_env: {env}
    issuer: https://idp.test
    audience: posts-api
plans:
  free: {{quotas: {{calls: 100}}}}
customers:
  acme: {{plan: free}}
"""


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[Any, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public_pem.decode()


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch, rsa_pair: tuple[Any, str]) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("MG_TEST_JWT_PUBLIC", rsa_pair[1])
    guard = MeterGuard(data_app, config=parse_config(PLANS.format(alg="RS256", env="MG_TEST_JWT_PUBLIC")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
        yield client


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "acme", "iss": "https://idp.test", "aud": "posts-api", "exp": now + 60, "iat": now}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


async def get(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/v1/posts/1?n=2", headers={"authorization": f"Bearer {token}"})


async def test_valid_rs256_token_is_admitted_and_metered(client: httpx.AsyncClient, rsa_pair: tuple[Any, str]) -> None:
    response = await get(client, jwt.encode(claims(), rsa_pair[0], algorithm="RS256"))
    assert response.status_code == 200
    assert response.headers["x-meterguard-usage"].startswith("calls=1;limit=100")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"exp": int(time.time()) - 120}, id="expired"),
        pytest.param({"exp": None}, id="no-exp"),
        pytest.param({"iss": "https://evil.test"}, id="wrong-issuer"),
        pytest.param({"aud": "other-api"}, id="wrong-audience"),
        pytest.param({"sub": "nobody"}, id="unknown-customer"),
        pytest.param({"sub": None}, id="no-subject"),
    ],
)
async def test_bad_claims_are_401(
    client: httpx.AsyncClient, rsa_pair: tuple[Any, str], overrides: dict[str, Any]
) -> None:
    response = await get(client, jwt.encode(claims(**overrides), rsa_pair[0], algorithm="RS256"))
    assert response.status_code == 401
    assert response.json()["type"] == "https://meterguard.dev/problems/unauthenticated"


async def test_algorithm_comes_from_the_allow_list_not_the_token(
    client: httpx.AsyncClient, rsa_pair: tuple[Any, str]
) -> None:
    # A token whose header names an algorithm outside the allow-list is refused whatever its key.
    forged = jwt.encode(claims(), "x" * 48, algorithm="HS256")
    assert (await get(client, forged)).status_code == 401
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert (await get(client, unsigned)).status_code == 401


async def test_tampered_signature_is_401(client: httpx.AsyncClient, rsa_pair: tuple[Any, str]) -> None:
    token = jwt.encode(claims(), rsa_pair[0], algorithm="RS256")
    head, payload, signature = token.split(".")
    tampered = f"{head}.{payload}.{signature[:-4]}AAAA"
    assert (await get(client, tampered)).status_code == 401


async def test_hs256_with_a_shared_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_TEST_JWT_SECRET", SECRET)
    guard = MeterGuard(data_app, config=parse_config(PLANS.format(alg="HS256", env="MG_TEST_JWT_SECRET")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
        assert (await get(client, jwt.encode(claims(), SECRET, algorithm="HS256"))).status_code == 200
        assert (await get(client, jwt.encode(claims(), SECRET + "x", algorithm="HS256"))).status_code == 401
