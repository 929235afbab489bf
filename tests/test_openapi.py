"""The admin API against its own OpenAPI 3.1 document: schemathesis, every check, a real server on Redis.

The gateway runs as a real uvicorn process (tests/wave.py) on the shared Redis under this module's
own key prefix; schemathesis generates requests from {admin.path}/openapi.json and checks every
response: no 5xx, status codes, content types, headers and bodies as documented, invalid data
refused, valid data accepted, authentication enforced.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from meterguard.admin._openapi import openapi_document
from meterguard.admin._spec import OPERATIONS

from .conftest import REDIS_URL, drop_keys
from .wave import Gateway

TOKEN = "openapi-test-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
# schemathesis sends hundreds of wrong tokens a minute from one address, and its ignored_auth check
# wants each refused with 401/403; under the default auth.failed_limit (60/minute) the throttle would
# rightly answer 429 (documented; test_throttle.py proves it). The limit is raised, not turned off,
# so that every wrong token still goes through the count.
PLANS = """
version: 1
auth:
  failed_limit: "100000/minute"
routes:
  - {match: "GET /health", public: true}
plans:
  free:
    quotas: {calls: 100, records: 1000}
  pro:
    price: "10.00"
    quotas: {calls: 1000}
    overage:
      calls: {unit: 100, price: "1.50"}
      spend_cap: "50.00"
customers:
  static-co:
    plan: free
    keys: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
"""


@pytest.fixture(scope="module")
def admin_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    config = tmp_path_factory.mktemp("openapi") / "plans.yaml"
    config.write_text(PLANS)
    prefix = f"mgtest-{uuid.uuid4().hex[:12]}"
    with Gateway("tests.support:data_app", config, f"{REDIS_URL}?prefix={prefix}", workers=1,
                 env={"MG_ADMIN_TOKEN": TOKEN}, log=config.parent / "gateway.log") as gateway:  # fmt: skip
        base = f"http://127.0.0.1:{gateway.port}/_meterguard"
        with httpx.Client(base_url=base, headers=ADMIN) as client:  # something to read in every document
            client.post("/customers", json={"id": "acme", "plan": "pro"}).raise_for_status()
            client.post("/customers/acme/keys").raise_for_status()
        yield schemathesis.openapi.from_url(f"{base}/openapi.json", headers=ADMIN)
    asyncio.run(drop_keys(REDIS_URL, prefix))


def test_every_response_matches_the_document(admin_schema: schemathesis.BaseSchema) -> None:
    """Each operation in turn (schemathesis's pytest plugin does not run under pytest 9: it reads
    a private attribute of pytest's nodes; its Python API does the same work here)."""
    failures: dict[str, str] = {}
    tested = set()
    for result in admin_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=ADMIN)

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - collected, so one report names every failing operation
            failures[operation.label] = str(exc)[:2000]
        tested.add(operation.label)
    # schemathesis leaves out the document's own path; every other operation is exercised.
    assert {f"{op.method} {op.path}" for op in OPERATIONS} - tested == {"GET /openapi.json"}
    assert not failures, "\n\n".join(f"{label}: {text}" for label, text in failures.items())


def test_the_document_is_openapi_3_1_and_covers_every_route() -> None:
    document = openapi_document("/_meterguard", ("free", "pro"))
    assert document["openapi"] == "3.1.0"
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert operations == {(op.method, op.path) for op in OPERATIONS}
    create = document["components"]["schemas"]["CustomerCreate"]
    assert create["properties"]["plan"]["enum"] == ["free", "pro"] and create["additionalProperties"] is False
    assert document["paths"]["/customers/{customer}/usage"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/UsageDocument"}


def test_the_dashboard_and_health_need_no_token_and_the_rest_does() -> None:
    document = openapi_document("/_meterguard")
    open_paths = {path for path, item in document["paths"].items() for op in item.values() if op["security"] == []}
    assert open_paths == {"/health", "/dashboard", "/dashboard.js", "/dashboard.css"}


def test_issued_and_rotated_keys_match_the_document(admin_schema: schemathesis.BaseSchema) -> None:
    """Generated key ids name no key, so the run above sees rotation's 404s only: here its 201 and
    409 answers on a real key, through the same checks."""
    issue = admin_schema["/customers/{customer}/keys"]["POST"]
    rotate = admin_schema["/keys/{key_id}/rotate"]["POST"]
    issued = issue.Case(path_parameters={"customer": "acme"}, body={"expires_at": "2099-01-01T00:00:00Z"})
    old = issued.call_and_validate(headers=ADMIN).json()
    assert (old["expires_at"], old["state"]) == ("2099-01-01T00:00:00Z", "active")
    rotated = rotate.Case(path_parameters={"key_id": old["key_id"]}, body={"grace": "0"})
    response = rotated.call_and_validate(headers=ADMIN)
    assert response.status_code == 201
    assert (response.json()["replaces"]["key_id"], response.json()["replaces"]["state"]) == (old["key_id"], "expired")
    again = rotate.Case(path_parameters={"key_id": old["key_id"]}, body={"grace": "1h"})
    assert again.call_and_validate(headers=ADMIN).status_code == 409  # expired: nothing to rotate
    fresh = issue.Case(path_parameters={"customer": "acme"}).call_and_validate(headers=ADMIN).json()
    no_body = rotate.Case(path_parameters={"key_id": fresh["key_id"]}).call_and_validate(headers=ADMIN)
    assert (no_body.status_code, no_body.json()["replaces"]["state"]) == (201, "expiring")  # the 24 h default
