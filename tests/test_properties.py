"""Generated hostile input (issue 9): never a 500, never an unbounded structure.

Raw ASGI scopes (header bytes with duplicates and huge values, odd methods and paths, any peer
address), credentials (API keys near the format, JWTs of generated parts, some of them signed)
and admin bodies, straight into the middleware. The app behind it always answers 200, so every
500 would be meterguard's own.

Profiles (env HYPOTHESIS_PROFILE): ``meterguard`` (the default; derandomized so that CI sees
the same cases on every run, and a few seconds in all) and ``thorough`` (random, 20x as many
examples, for a run by hand: ``HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import string
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterguard import MeterGuard, auth, parse_config
from meterguard._throttle import MAX_BLOCKED
from meterguard.keys import ALPHABET, PREFIX, checksum, generate_key
from meterguard.store.memory import MemoryStore

settings.register_profile(
    "meterguard",
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough",
    max_examples=6000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "meterguard"))

RSA_PUBLIC_PEM = (
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
TOKEN = "property-admin-token-0123456789"
SECRET = "a-property-secret-of-sufficient-length-for-hs256"
PLANS = """
version: 1
auth:
  trusted_proxies: ["10.0.0.0/8", "fd00::/8"]
  jwt: {algorithms: [HS256], key_env: MG_PROPERTY_SECRET, issuer: https://idp.test}
routes:
  - {match: "GET /health", public: true}
  - {match: "GET /v1/posts/{id}", weight: 2}
  - {match: "* /v1/pro/*", plans: [pro]}
plans:
  free: {rate_limits: ["100000/minute"], quotas: {calls: 1000000, records: 1000000}}
  pro:
    quotas: {calls: 10}
    overage: {calls: {unit: 1, price: "0.01"}, spend_cap: "1.00"}
customers:
  acme: {plan: free}
"""


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Answers every request 200 with three records: any 500 below is meterguard's."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"data": [1, 2, 3]}'})


class Gateway:
    def __init__(self, guard: MeterGuard, key: str, key_id: str) -> None:
        self.guard = guard
        self.key = key
        self.key_id = key_id

    async def call(self, scope: dict[str, Any], body: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
        """One request through the middleware: (status, headers, body); fails on anything but one whole answer."""
        messages: list[dict[str, Any]] = []
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        full = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
                "root_path": "", "server": ("gw.test", 80), "query_string": b"", **scope}  # fmt: skip
        await self.guard(full, receive, send)
        assert messages and messages[0]["type"] == "http.response.start", messages
        status = messages[0]["status"]
        assert isinstance(status, int) and 100 <= status < 600
        assert messages[-1]["type"] == "http.response.body" and not messages[-1].get("more_body", False)
        headers = {name.lower(): value for name, value in messages[0].get("headers", [])}
        return status, headers, b"".join(message.get("body", b"") for message in messages[1:])

    def assert_bounded(self) -> None:
        authenticator = self.guard.authenticator
        assert authenticator._cache_bytes <= auth.CACHE_BYTES
        assert len(authenticator._cache) <= auth.CACHE_SIZE
        assert len(authenticator._good) <= auth.KNOWN_GOOD_SIZE
        assert len(authenticator.throttle.blocked) <= MAX_BLOCKED


@pytest.fixture
async def gateway(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("MG_PROPERTY_SECRET", SECRET)
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    guard = MeterGuard(app, config=parse_config(PLANS), store=MemoryStore())
    await guard.directory.create("globex", "free")
    record, key = await guard.directory.issue_key("globex")
    yield Gateway(guard, key, record.key_id)
    await guard.aclose()


# -- strategies ---------------------------------------------------------------------------------------

HEADER_NAMES = [
    b"x-api-key", b"authorization", b"idempotency-key", b"content-length", b"content-type", b"x-forwarded-for",
    b"host", b"transfer-encoding", b"access-control-request-method", b"x-meterguard-records", b"cookie",
]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT", "get", "", "M-SEARCH"]
PATHS = [
    "/", "/health", "/v1/posts/1", "/v1/posts/", "/v1/pro/x", "/v1/pro/", "/_meterguard", "/_meterguard/",
    "/_meterguard/health", "/_meterguard/customers", "/_meterguard/customers/", "/_meterguard/customers/acme",
    "/_meterguard/customers/acme/keys", "/_meterguard/customers/acme/usage", "/_meterguard/customers/acme/usage/daily",
    "/_meterguard/customers/acme/statement", "/_meterguard/me/usage", "/_meterguard/keys/key_0/rotate",
    "/_meterguardX", "/_meterguard/../v1/posts/1", "//_meterguard/customers", "/_meterguard/%2e%2e/customers",
]  # fmt: skip


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

key_like = st.one_of(
    st.just(None).map(lambda _: generate_key()),  # well formed, unknown
    st.text(alphabet=ALPHABET, max_size=50).map(lambda body: PREFIX + body),  # near the format
    st.text(alphabet=ALPHABET, min_size=32, max_size=32).map(lambda body: PREFIX + body + checksum(PREFIX + body)),
    st.text(max_size=60),
)

claims = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.one_of(st.sampled_from(["acme", "globex", "nobody"]), json_values),
        "exp": st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text(max_size=5), st.none()),
        "nbf": st.one_of(st.integers(min_value=-(2**40), max_value=2**40), st.text(max_size=5)),
        "iss": st.one_of(st.just("https://idp.test"), json_values),
        "aud": json_values,
        "azp": st.one_of(st.text(max_size=100), json_values),
    },
)
headers_json = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.one_of(st.sampled_from(["HS256", "HS512", "RS256", "none", "None", "ES256", ""]), json_values),
        "typ": json_values,
        "kid": json_values,
        "crit": json_values,
        "b64": json_values,
    },
)


def part(value: Any) -> str:
    return b64(json.dumps(value, allow_nan=True).encode())


def signed(claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """An HS256 JWS over any claims, signed with the gateway's secret (PyJWT's encode checks claims)."""
    signing_input = f"{part(header or {'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


jwt_like = st.one_of(
    # generated header and claims, signed with the right secret: a valid signature over anything
    claims.map(signed),
    st.tuples(claims, headers_json).map(lambda t: signed(*t)),
    # generated parts, unsigned or with garbage signatures
    st.tuples(headers_json, claims, st.binary(max_size=64)).map(lambda t: f"{part(t[0])}.{part(t[1])}.{b64(t[2])}"),
    st.tuples(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=64)).map(
        lambda t: ".".join(b64(x) for x in t)
    ),
    st.tuples(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40)).map(".".join),
    # JSON nested past Python's recursion limit, in the header (decoded before any signature check)
    st.one_of(st.integers(1, 64), st.sampled_from([999, 1000, 2000, 3000])).map(
        lambda depth: f"{b64(b'[' * depth)}.{part({})}.c2ln"
    ),
)

credentials = st.one_of(key_like, jwt_like)


def header_value(gateway_key: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=80),
        st.integers(min_value=4000, max_value=1_100_000).map(lambda n: b"a" * n),  # huge
        credentials.map(lambda c: c.encode("utf-8", "surrogatepass")),
        credentials.map(lambda c: ("Bearer " + c).encode("utf-8", "surrogatepass")),
        st.sampled_from([gateway_key.encode(), f"Bearer {gateway_key}".encode(), f"Bearer {TOKEN}".encode()]),
        st.text(alphabet="0123456789.:[]abcdef, ", max_size=80).map(str.encode),  # address-like
    )


def scopes(gateway_key: str) -> st.SearchStrategy[dict[str, Any]]:
    names = st.one_of(st.sampled_from(HEADER_NAMES), st.binary(min_size=1, max_size=20).map(bytes.lower))
    return st.fixed_dictionaries(
        {
            "method": st.one_of(st.sampled_from(METHODS), st.text(alphabet=string.ascii_letters + "-", max_size=20)),
            "path": st.one_of(
                st.sampled_from(PATHS),
                st.text(max_size=200).map(lambda text: "/" + text),
                st.sampled_from(PATHS).flatmap(lambda p: st.text(max_size=30).map(lambda t: p + t)),
                st.integers(min_value=1000, max_value=20_000).map(lambda n: "/v1/" + "p" * n),
            ),
            "query_string": st.binary(max_size=100),
            "headers": st.lists(st.tuples(names, header_value(gateway_key)), max_size=8),
            "client": st.one_of(
                st.none(),
                st.tuples(
                    st.sampled_from(["198.51.100.7", "10.0.0.2", "::1", "fd00::5", "2001:db8::1", "::ffff:1.2.3.4"]),
                    st.integers(min_value=0, max_value=65535),
                ),
                st.tuples(st.text(max_size=30), st.integers(min_value=0, max_value=65535)),
            ),
        }
    )


# -- properties ------------------------------------------------------------------------------------------


@given(data=st.data())
async def test_no_request_scope_makes_a_500(gateway: Gateway, data: st.DataObject) -> None:
    scope = data.draw(scopes(gateway.key))
    body = data.draw(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
    status, headers, _ = await gateway.call(scope, body)
    assert status != 500
    if status >= 400 and status != 405:
        assert headers.get(b"content-type") == b"application/problem+json", (status, headers)
    gateway.assert_bounded()


@pytest.fixture(params=["hs256", "mixed-by-hand"])
async def jwt_gateway(request: pytest.FixtureRequest, gateway: Gateway) -> Gateway:
    """The gateway as configured, and one whose JWT settings were built by hand with RS256 and HS256
    for one RSA key: config load refuses that (test_config_hostile.py); a request must still get a
    401, as it did not before issue 9 (PyJWT's InvalidKeyError was a 500)."""
    if request.param == "mixed-by-hand":
        config = gateway.guard.config
        assert config.jwt is not None
        mixed = dataclasses.replace(config.jwt, algorithms=("RS256", "HS256"), key=RSA_PUBLIC_PEM, verifier=None)
        guard = MeterGuard(app, config=dataclasses.replace(config, jwt=mixed), store=gateway.guard.store)
        return Gateway(guard, gateway.key, gateway.key_id)
    return gateway


@given(credential=credentials, where=st.sampled_from(["x-api-key", "bearer", "both"]))
async def test_no_credential_makes_a_500(jwt_gateway: Gateway, credential: str, where: str) -> None:
    gateway = jwt_gateway
    value = credential.encode("utf-8", "surrogatepass")
    headers = {
        "x-api-key": [(b"x-api-key", value)],
        "bearer": [(b"authorization", b"Bearer " + value)],
        "both": [(b"x-api-key", value), (b"authorization", b"Bearer " + value)],
    }[where]
    status, _, _ = await gateway.call({"method": "GET", "path": "/v1/posts/1", "headers": headers,
                                       "client": ("198.51.100.9", 1)})  # fmt: skip
    assert status in (200, 401, 403, 429), status
    gateway.assert_bounded()


ADMIN_TARGETS = [
    ("POST", "/_meterguard/customers"),
    ("PATCH", "/_meterguard/customers/acme"),
    ("POST", "/_meterguard/customers/acme/keys"),
    ("POST", "/_meterguard/keys/{key_id}/rotate"),
]


@given(
    target=st.sampled_from(ADMIN_TARGETS),
    body=st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.sampled_from(["id", "plan", "status", "spend_cap", "anchor_day", "expires_at", "grace", "x"]),
            st.one_of(
                json_values,
                st.sampled_from(["free", "pro", "1e30", "1_000", "NaN", "24h", "0", "2027-01-01T00:00:00Z", "-1"]),
            ),
            max_size=4,
        ).map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=300),
        st.integers(min_value=1, max_value=60_000).map(lambda n: b"[" * n),
        st.sampled_from([b"NaN", b"Infinity", b'{"spend_cap": 1e999}', b"1" * 5000, b'"\\ud800"']),
    ),
)
async def test_no_admin_body_makes_a_500(gateway: Gateway, target: tuple[str, str], body: bytes) -> None:
    method, path = target
    headers = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {"method": method, "path": path.format(key_id=gateway.key_id), "headers": headers,
             "client": ("10.9.9.9", 1)}  # fmt: skip
    status, response_headers, _ = await gateway.call(scope, body)
    assert status < 500, status
    if status >= 400:
        assert response_headers.get(b"content-type") == b"application/problem+json"
    gateway.assert_bounded()


ADMIN_READS = [
    "/_meterguard/customers/acme/usage",
    "/_meterguard/customers/acme/usage/daily",
    "/_meterguard/customers/acme/statement",
    "/_meterguard/customers/acme/keys",
    "/_meterguard/customers",
    "/_meterguard/plans",
    "/_meterguard/me/usage",
]


@given(
    path=st.sampled_from(ADMIN_READS),
    query=st.lists(
        st.tuples(
            st.sampled_from(["period", "days", "x", ""]),
            st.one_of(
                st.text(max_size=12),
                st.from_regex(r"[0-9]{1,5}-[0-9]{1,3}", fullmatch=True),
                st.integers(min_value=-(10**6), max_value=10**6).map(str),
                st.integers(min_value=4300, max_value=6000).map(lambda n: "1" * n),  # past int()'s digit limit
            ),
        ),
        max_size=3,
    ),
)
async def test_no_admin_query_makes_a_500(gateway: Gateway, path: str, query: list[tuple[str, str]]) -> None:
    headers = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"x-api-key", gateway.key.encode())]
    if path.endswith("/me/usage"):
        headers = headers[1:]
    query_string = urlencode(query).encode()
    scope = {"method": "GET", "path": path, "headers": headers, "query_string": query_string, "client": ("10.9.9.8", 1)}
    status, response_headers, _ = await gateway.call(scope)
    assert status < 500, (status, path, query_string[:80])
    if status >= 400:
        assert response_headers.get(b"content-type") == b"application/problem+json"
