"""The Redis Cluster store: the Redis store with a cluster client, nothing else.

Every script touches the keys of one slot only, all declared, so each runs on the one node
that owns the slot. MOVED/ASK/TRYAGAIN are followed by redis-py (the command did not run, so
following them cannot count twice); connection errors and timeouts are retried by the ledger
with the batch's id (store/_ledger.py), which makes a retry of a batch that did run harmless.

redis-py's cluster client closes every connection of every node, including those still waiting
for replies, on every ``reinitialize_steps``-th MOVED (default 5): under a reshard that cut the
replies of scripts that had run, and the closes fed each other into a storm. It runs here with
``reinitialize_steps=0``: a MOVED updates the slot map and nothing else.

The METER call of every batch goes over the thin client (store/_resp.py), one connection per
node, to the node redis-py's slot map names for the batch's slot. Whatever needs the cluster's
knowledge goes back to redis-py for that call: a MOVED, ASK, TRYAGAIN or CLUSTERDOWN reply (the
script did not run; redis-py follows the redirect and updates its map), and the first call to a
node after its thin connection failed (redis-py finds out whether the node is gone and, if so,
reloads the slot map; a failover's new primary then gets a thin connection of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from ..errors import ConfigError, ConfigIssue, StoreError, StoreUnavailable
from ._redis_client import DEFAULT_TIMEOUT_SECONDS, Script, no_retry, translated
from ._resp import SUPPORTED_OPTIONS, Endpoint, ThinClient
from .redis import RedisStore

DEFAULT_PORT = 6379
# Replies after which the script did not run and redis-py must take the call (its slot map is stale).
REDIRECTS = (redis_errors.MovedError, redis_errors.AskError, redis_errors.TryAgainError, redis_errors.ClusterDownError)


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
        self._suspects: set[str] = set()  # nodes whose thin connection failed: redis-py calls them next
        self._thin_options: dict[str, Any] | None = None

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

    async def _hot_script(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int | float]) -> Any:
        if self._closed:
            raise StoreUnavailable("the store has been closed")
        if self._thin_options is None:
            self._thin_options = self._options()
        options = self._thin_options
        cluster = self._client()
        if not keys or not options.keys() <= SUPPORTED_OPTIONS:  # other options: redis-py only (store/_resp.py)
            return await self._script(script, keys, args)
        with translated():
            await cluster.initialize()  # loads the slot map once, and again after redis-py saw a node fail
            node = cluster.nodes_manager.get_node_from_slot(key_slot(keys[0].encode()))
        if node.name in self._suspects:
            result = await self._script(script, keys, args)
            self._suspects.discard(node.name)
            return result
        thin = self._thins.get(node.name)
        if thin is None:
            user, password = options.get("username"), options.get("password")
            connect_timeout = float(options["socket_connect_timeout"])
            server = Endpoint(node.host, node.port, 0, user, password, self.timeout, connect_timeout)
            thin = self._thins[node.name] = ThinClient(server)
        try:
            return await self._thin_script(thin, script, keys, args)
        except StoreError as exc:
            if isinstance(exc.__cause__, REDIRECTS):
                return await self._script(script, keys, args)
            if isinstance(exc, StoreUnavailable):
                self._suspects.add(node.name)
            raise
