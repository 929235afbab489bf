"""Stores are chosen by URL through one factory, as limits' ``storage_from_string`` does.

A ``prefix`` query parameter (``redis://host:6379/0?prefix=billing``) puts every key of the
store under that prefix (default ``mg``), so that several deployments or test runs can share
one Redis database without seeing each other's data.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._types import Clock
from ..errors import ConfigError, ConfigIssue
from .base import Store

SCHEMES = ("memory", "redis", "rediss", "redis+cluster")
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


def _bad(reason: str) -> ConfigError:
    return ConfigError([ConfigIssue("store", None, "", reason)])


def split_prefix(url: str) -> tuple[str, str]:
    """``(url without the prefix parameter, prefix)``."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    if not prefixes:
        return url, "mg"
    prefix = prefixes[-1]
    if not _PREFIX.match(prefix):
        raise _bad(f"store URL prefix {prefix!r} must be 1-64 letters, digits, '_', '.' or '-'")
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def store_from_url(url: str, *, clock: Clock | None = None) -> Store:
    """``memory://``, ``redis://host:port/db``, ``rediss://...``, ``redis+cluster://h:p[,h:p...]``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        # Backends are imported when chosen: store.base must import without them (billing.py needs it).
        from .memory import MemoryStore

        return MemoryStore(url, clock=clock) if clock is not None else MemoryStore(url)
    if scheme in ("redis", "rediss"):
        from .redis import RedisStore

        bare, prefix = split_prefix(url)
        store: Store = RedisStore(bare, key_prefix=prefix)
        return store
    if scheme == "redis+cluster":
        from .cluster import RedisClusterStore

        bare, prefix = split_prefix(url)
        cluster: Store = RedisClusterStore(bare, key_prefix=prefix)
        return cluster
    raise _bad(f"unknown store URL scheme {scheme!r}; use one of {', '.join(s + '://' for s in SCHEMES)}")


__all__ = ["Store", "store_from_url"]
