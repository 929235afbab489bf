"""The frozen result of plans.yaml: Config and its settings, which everything else reads.

config.py builds them from the file (and is where they are imported from); they live here so that
the builders of their parts (_config_jwt.py) use them without importing config.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._config_schema import WEBHOOK_URL, Network
from .errors import ConfigError, ConfigIssue
from .plans import Plan, RouteTable


@dataclass(frozen=True, slots=True)
class StaticCustomer:
    id: str
    plan: str
    keys: tuple[str, ...] = ()
    status: Literal["active", "suspended"] = "active"
    anchor_day: int | None = None


@dataclass(frozen=True, slots=True)
class JWTSettings:
    """Signed JWTs accepted as credentials (RFC 8725: algorithms allow-listed, exp required)."""

    algorithms: tuple[str, ...]
    key: str = field(repr=False)
    issuer: str | None = None
    audience: str | None = None
    customer_claim: str = "sub"
    leeway: int = 0
    #: The key loaded by PyJWT (a public key object, or the secret's bytes): parsed once, at load.
    verifier: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Where alerts are POSTed. The URL and secret may come from the environment; the secret
    is read only when a deliverer starts, so commands that send nothing do not need it."""

    url: str | None
    url_env: str | None
    secret_env: str
    timeout_seconds: float = 5.0

    def resolve(self, environ: Mapping[str, str] | None = None) -> tuple[str, bytes]:
        """``(url, secret)``; raises ConfigError naming the variable that is unset or invalid."""
        env = os.environ if environ is None else environ
        issues: list[ConfigIssue] = []
        url = self.url
        if url is None and self.url_env is not None:
            url = env.get(self.url_env) or None
            if url is None:
                issues.append(
                    ConfigIssue("webhooks", None, "url_env", f"environment variable {self.url_env} is not set")
                )
            elif not WEBHOOK_URL.match(url):
                issues.append(ConfigIssue("webhooks", None, "url_env", f"{self.url_env} is not an http(s) URL"))
        secret = env.get(self.secret_env, "")
        if not secret:
            issues.append(
                ConfigIssue("webhooks", None, "secret_env", f"environment variable {self.secret_env} is not set")
            )
        if issues:
            raise ConfigError(issues)
        assert url is not None
        return url, secret.encode("utf-8")


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """Where usage waits while the store is away (``spool``) and how much of the event stream
    each customer keeps (``events``). docs/reliability.md says what each bound means."""

    spool_path: str | None = None  # a directory; None: the ledger lives in memory only
    spool_max_events: int = 100_000  # usage entries (customer, period, day) held; past it: "unmetered"
    events_max_len: int = 1_000_000  # usage events per customer stream (approximate trim)
    events_keep_exported_seconds: int = 86_400  # exported events stay this long (new export groups, replays)


@dataclass(frozen=True, slots=True)
class Config:
    plans: Mapping[str, Plan]
    routes: RouteTable
    customers: Mapping[str, StaticCustomer] = field(default_factory=dict)
    version: int = 1
    currency: str = "USD"
    store: str | None = None
    anchor: Literal["calendar", "anniversary"] = "calendar"
    api_key_header: str = "x-api-key"
    jwt: JWTSettings | None = None
    failed_limit: str | None = "60/minute"  # failed authentications per client address; None: off
    trusted_proxies: tuple[Network, ...] = ()  # X-Forwarded-For is believed from these only
    max_credential_bytes: int = 4096
    admin_path: str = "/_meterguard"
    admin_token_env: str = "MG_ADMIN_TOKEN"
    records_header: str = "x-meterguard-records"
    records_json_field: str | None = "data"
    records_max_body_bytes: int = 8 * 1024 * 1024
    consistency: Literal["exact", "fast"] = "exact"
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    webhooks: WebhookSettings | None = None
    ledger: LedgerSettings = LedgerSettings()
    source: str = "<config>"


__all__ = ["Config", "JWTSettings", "LedgerSettings", "StaticCustomer", "WebhookSettings"]
