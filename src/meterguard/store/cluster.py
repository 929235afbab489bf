"""The Redis Cluster store: the Redis store with a cluster client, nothing else.

Every script touches the keys of one slot only, all declared, so each runs on the one node
that owns the slot. MOVED/ASK/TRYAGAIN are followed by redis-py (the command did not run, so
following them cannot count twice); connection errors and timeouts are retried by the ledger
with the batch's id (store/_ledger.py), which makes a retry of a batch that did run harmless.

redis-py's cluster client closes every connection of every node, including those still waiting
for replies, on every ``reinitialize_steps``-th MOVED (default 5): under a reshard that cut the
replies of scripts that had run, and the closes fed each other into a storm. It runs here with
``reinitialize_steps=0``: a MOVED updates the slot map and nothing else.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from ..errors import ConfigError, ConfigIssue
from ._redis_client import DEFAULT_TIMEOUT_SECONDS, no_retry
from .redis import RedisStore

DEFAULT_PORT = 6379


def startup_nodes(url: str) -> list[tuple[str, int]]:
    """``redis+cluster://h:p[,h:p...]`` as ``[(host, port), ...]``."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        host = host.strip("[]")
        if not host:
            break
        try:
            nodes.append((host, int(port) if port else DEFAULT_PORT))
        except ValueError:
            break
    else:
        if nodes:
            return nodes
    raise ConfigError([ConfigIssue("store", None, "", f"bad Redis Cluster URL {url!r}; use redis+cluster://h:p[,h:p]")])


def _option(value: str) -> Any:
    """A URL query value as redis-py wants it: ``max_connections=10``, ``socket_timeout=0.5``."""
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


class RedisClusterStore(RedisStore):
    """Store on a Redis Cluster: ``redis+cluster://host:port[,host:port...]``."""

    def __init__(self, url: str, *, key_prefix: str = "mg") -> None:
        super().__init__(url, key_prefix=key_prefix)
        self._nodes = startup_nodes(url)  # validated now, connected on first use

    def _group_of(self, customer: str) -> int:
        # A script may only touch keys of one slot: batches are per slot.
        return int(key_slot(self._tag(customer).encode()))

    def _subscriber(self) -> tuple[Any, Any]:
        # A PUBLISH on any node of a cluster reaches the subscribers of every node, so one plain
        # connection to a startup node is enough. (redis-py's cluster pub/sub looks up a node by
        # slot before it has loaded the slot map, and leaks its connection when closed.)
        host, port = self._nodes[0]
        options = self._options()
        client = Redis(host=host, port=port, decode_responses=True, retry=no_retry(), **options)
        return client.pubsub(), client

    def _options(self) -> dict[str, Any]:
        parts = urlsplit(self.url)
        options: dict[str, Any] = {
            "socket_timeout": DEFAULT_TIMEOUT_SECONDS,
            "socket_connect_timeout": DEFAULT_TIMEOUT_SECONDS,
        }
        for name, value in parse_qsl(parts.query):
            options[name] = _option(value)
        if parts.username:
            options["username"] = parts.username
        if parts.password:
            options["password"] = parts.password
        return options

    def _connect(self) -> Any:
        options = self._options()
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._nodes],
            decode_responses=True,
            retry=no_retry(),
            reinitialize_steps=0,
            **options,
        )
