"""Structured logs: every line of a request carries its context; no line ever holds a key or token."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from meterguard import MeterGuard, parse_config
from meterguard.logs import configure_logging, redact

from .support import data_app

TOKEN = "logs-admin-token-0123456789"
PLANS = """
version: 1
routes:
  - {match: "GET /v1/header"}
plans:
  basic:
    rate_limits: ["100/minute"]
"""


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", level=logging.DEBUG, stream=stream)
    yield stream
    logger = logging.getLogger("meterguard")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


async def test_json_lines_carry_the_request_and_never_a_secret(
    monkeypatch: pytest.MonkeyPatch, captured: io.StringIO
) -> None:
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    guard = MeterGuard(data_app, config=parse_config(PLANS))
    admin = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://api.test") as client:
        await client.post("/_meterguard/customers", headers=admin, json={"id": "acme", "plan": "basic"})
        key = (await client.post("/_meterguard/customers/acme/keys", headers=admin)).json()["key"]
        key_id = (await client.get("/_meterguard/customers/acme/keys", headers=admin)).json()["keys"][0]["key_id"]
        # The app sends a records header that is not a count: meterguard logs it, in this request's context.
        assert (await client.get("/v1/header?n=abc", headers={"x-api-key": key})).status_code == 200
        assert (await client.get("/v1/header?n=abc", headers={"Authorization": f"Bearer {key}"})).status_code == 200
        await client.get("/v1/header", headers={"x-api-key": key[:-1] + "x"})  # bad checksum
        await client.get("/v1/header", headers={"x-api-key": "mg_live_" + "A" * 38})  # unknown
        # Even a careless line that names a key or a bearer token comes out masked.
        logging.getLogger("meterguard.test").warning("key %s, header 'Bearer %s'", key, TOKEN)
    await guard.aclose()

    text = captured.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert key not in text and key[8:] not in text and TOKEN not in text
    records = [line for line in lines if line["logger"] == "meterguard.records"]
    assert len(records) == 2
    first, second = records
    assert first["customer"] == second["customer"] == "acme"
    assert first["key_id"] == key_id and first["plan"] == "basic" and first["route"] == "GET /v1/header"
    assert first["level"] == "WARNING" and first["ts"].endswith("Z")
    assert first["request_id"] != second["request_id"]  # one id per request
    masked = next(line for line in lines if line["logger"] == "meterguard.test")
    assert "mg_live_***" in masked["message"] and "Bearer***" in masked["message"]


def test_text_format_appends_the_context(captured: io.StringIO) -> None:
    stream = io.StringIO()
    configure_logging("text", stream=stream)
    logging.getLogger("meterguard.x").warning("plain line, no request")
    assert stream.getvalue().rstrip().endswith("meterguard.x: plain line, no request")
    with pytest.raises(ValueError):
        configure_logging("xml")


def test_configuring_again_replaces_its_own_handler_and_keeps_others(captured: io.StringIO) -> None:
    """An application's handler on the meterguard logger has no name (get_name() is None, typed
    str): configure_logging passes it by, compiled (make compile) or not."""
    logger = logging.getLogger("meterguard")
    theirs = logging.StreamHandler(io.StringIO())
    logger.addHandler(theirs)
    try:
        configure_logging("text", stream=io.StringIO())
        configure_logging("json", stream=io.StringIO())
        ours = [handler for handler in logger.handlers if handler.name == "meterguard"]
        assert theirs in logger.handlers
        assert len(ours) == 1 and type(ours[0].formatter).__name__ == "JsonFormatter"
    finally:
        logger.removeHandler(theirs)


def test_redact_masks_keys_bearer_tokens_and_jwts() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhY21lIn0.c2lnbmF0dXJl"
    text = redact(f"a mg_live_{'a1' * 19} b Authorization: bearer s3cret c {jwt}")
    assert "a1a1" not in text and "s3cret" not in text and "c2lnbmF0dXJl" not in text


def test_mg_log_format_configures_the_hierarchy(monkeypatch: pytest.MonkeyPatch, captured: io.StringIO) -> None:
    logger = logging.getLogger("meterguard")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    monkeypatch.setenv("MG_LOG_FORMAT", "json")
    MeterGuard(data_app, config=parse_config(PLANS))
    handlers = [handler for handler in logger.handlers if handler.get_name() == "meterguard"]
    assert len(handlers) == 1 and type(handlers[0].formatter).__name__ == "JsonFormatter"
