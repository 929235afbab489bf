"""Stores are chosen by URL through one factory, as limits' ``storage_from_string`` does."""

from __future__ import annotations

from urllib.parse import urlsplit

from .._types import Clock
from ..errors import ConfigError, ConfigIssue
from .base import Store
from .memory import MemoryStore

SCHEMES = ("memory", "redis", "rediss", "redis+cluster")


def store_from_url(url: str, *, clock: Clock | None = None) -> Store:
    """``memory://``, ``redis://host:port/db``, ``rediss://...``, ``redis+cluster://h:p[,h:p...]``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore(url, clock=clock) if clock is not None else MemoryStore(url)
    if scheme in ("redis", "rediss"):
        from .redis import RedisStore

        store: Store = RedisStore(url)
        return store
    if scheme == "redis+cluster":
        from .cluster import RedisClusterStore

        cluster: Store = RedisClusterStore(url)
        return cluster
    raise ConfigError([ConfigIssue("store", None, "", f"unknown store URL scheme {scheme!r}; use one of {SCHEMES}")])


__all__ = ["Store", "store_from_url"]
