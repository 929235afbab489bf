"""Signed JWTs as credentials (RFC 8725): allow-listed algorithms, exp required, iss and aud checked."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
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


# -- expiry is exp (+ leeway), cache or no cache -------------------------------------------------------


async def _wait_until(moment: float) -> None:
    while time.time() < moment:
        await asyncio.sleep(min(0.05, max(0.0, moment - time.time())))


async def _token_expiring_soon(rsa_pair: tuple[Any, str]) -> tuple[str, int]:
    """An RS256 token whose exp is 0.4-0.7 s away (exp is whole seconds): well inside the one
    second for which the code before issue 9 served a verified token from its cache."""
    while not 0.3 <= time.time() % 1 <= 0.6:
        await asyncio.sleep(0.02)
    exp = int(time.time()) + 1
    return jwt.encode(claims(exp=exp), rsa_pair[0], algorithm="RS256"), exp


async def test_a_cached_token_is_refused_from_the_second_exp_passes(
    client: httpx.AsyncClient, rsa_pair: tuple[Any, str]
) -> None:
    """Before (18c8b91): a verified token was cached for a second whatever its exp, so it was
    served after exp; this test got 200 there. Now the cache entry ends at exp + leeway."""
    # The first request starts the change-event watcher, which empties the cache once subscribed:
    # let that happen first, or the cache would be emptied under the test by chance.
    await client.get("/health")
    await asyncio.sleep(0.05)
    token, exp = await _token_expiring_soon(rsa_pair)
    assert (await get(client, token)).status_code == 200  # verified, and cached
    await _wait_until(exp + 0.02)
    response = await get(client, token)  # well within a second of the first request
    assert response.status_code == 401
    assert response.json()["detail"] == "The token has expired."


async def test_leeway_extends_a_token_by_exactly_that(
    monkeypatch: pytest.MonkeyPatch, rsa_pair: tuple[Any, str]
) -> None:
    monkeypatch.setenv("MG_TEST_JWT_PUBLIC", rsa_pair[1])
    plans = PLANS.format(alg="RS256", env="MG_TEST_JWT_PUBLIC").replace(
        "audience: posts-api", "audience: posts-api\n    leeway: 1"
    )
    guard = MeterGuard(data_app, config=parse_config(plans))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
        await client.get("/health")
        await asyncio.sleep(0.05)
        token, exp = await _token_expiring_soon(rsa_pair)
        assert (await get(client, token)).status_code == 200
        await _wait_until(exp + 0.1)
        assert (await get(client, token)).status_code == 200  # within the leeway
        await _wait_until(exp + 1.02)
        assert (await get(client, token)).status_code == 401


# -- nothing PyJWT raises becomes a 500 --------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(b64(b"[" * 2500) + "." + b64(b"{}") + ".c2ln", id="header-nested-2500-deep"),
        pytest.param(b64(b'{"alg":"RS256"}') + "." + b64(b"[" * 2500) + ".c2ln", id="payload-nested"),
        pytest.param(b64(b'{"alg":"RS256","crit":[1]}') + "." + b64(b"{}") + ".c2ln", id="crit-not-strings"),
        pytest.param(b64(b'{"alg":"RS256","kid":{"a":1}}') + "." + b64(b"{}") + ".c2ln", id="kid-object"),
        pytest.param(b64(b'{"alg":["RS256"]}') + "." + b64(b"{}") + ".c2ln", id="alg-list"),
        pytest.param(b64(b'{"alg":"RS256","b64":false}') + "." + b64(b"{}") + ".c2ln", id="b64-false"),
        pytest.param(b64(b"\xff\xfe") + "." + b64(b"\x00") + "." + b64(b"\x01"), id="binary-parts"),
        pytest.param("..", id="empty-parts"),
        pytest.param("a.b.c", id="not-base64-json"),
        pytest.param(b64(b'{"alg":"RS256"}') + "." + b64(b'{"exp":1e999}') + ".c2ln", id="exp-infinite"),
    ],
)
async def test_hostile_tokens_are_401_never_500(client: httpx.AsyncClient, token: str) -> None:
    assert len(token) < 4096
    response = await get(client, token)
    assert response.status_code == 401, response.text
    assert response.json()["type"] == "https://meterguard.dev/problems/unauthenticated"


async def test_a_key_pyjwt_cannot_use_is_a_401_even_if_it_got_past_load(
    monkeypatch: pytest.MonkeyPatch, rsa_pair: tuple[Any, str]
) -> None:
    """Config load refuses mixed algorithm families now (test_config_hostile.py). Were one to get
    through (a future PyJWT, a config built by hand), the request is still a 401, not a 500 as
    before (18c8b91: InvalidKeyError escaped for a token whose header said HS256)."""
    monkeypatch.setenv("MG_TEST_JWT_PUBLIC", rsa_pair[1])
    config = parse_config(PLANS.format(alg="RS256", env="MG_TEST_JWT_PUBLIC"))
    assert config.jwt is not None
    mixed = dataclasses.replace(config.jwt, algorithms=("RS256", "HS256"), verifier=None)
    guard = MeterGuard(data_app, config=dataclasses.replace(config, jwt=mixed))
    hs256 = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(b'{"sub":"acme"}') + ".c2ln"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
        response = await get(client, hs256)
        assert response.status_code == 401
        assert response.json()["detail"] == "The token is invalid."
