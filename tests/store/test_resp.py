"""The thin client of the METER call (store/_resp.py) against real Redis servers: replies as
redis-py gives them, order under cancellation, timeouts, restarts, the script cache, connection
setup from the URL, and the store's close.

The store's own tests (tests/store/, tests/test_faults.py, ...) run every admission and
settlement of a ``redis://`` store through it; these break the connection on purpose.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from meterguard.errors import StoreError, StoreUnavailable
from meterguard.store._redis_client import RedisBase, script
from meterguard.store._resp import Connection, endpoint
from meterguard.store.cluster import RedisClusterStore
from meterguard.store.redis import RedisStore

from ..faultproxy import FaultProxy
from ..servers import ClusterHarness, RedisServer

ECHO = script("return {ARGV[1], tonumber(ARGV[1]), {'n', ARGV[1]}}", "echo")
# The shapes a METER reply has: server time, per-work status with nested decisions, strings and integers.
SHAPED = script(
    "return {1764500000, 123456, {'ok', {1, 0, 99, -7, 'x'}}, {'dup', 5, 6, {{'ok', {1}}}}, 'é', false,"
    " tonumber(ARGV[1]) * 2, KEYS[1]}",
    "shaped",
)
BOOM = script("return redis.error_reply('ERR boom: the script refused')", "boom")


async def echo(base: RedisBase, n: int) -> Any:
    return await base._hot_script(ECHO, [], [str(n)])


def connection(base: RedisBase) -> Connection | None:
    assert "" in base._thins, "the thin client does not serve this URL"
    return base._thins[""]._connection


async def closed(base: RedisBase) -> None:
    base._closed = True
    await base._close_clients()


async def test_replies_and_errors_are_what_redis_py_gives(redis_url: str) -> None:
    base = RedisBase(redis_url)
    try:
        for argument in ("21", "-3"):
            thin = await base._hot_script(SHAPED, ["mg-test-resp:k"], [argument])
            assert thin == await base._script(SHAPED, ["mg-test-resp:k"], [argument])
        assert connection(base) is not None
        errors = []
        for call in (base._hot_script, base._script):
            with pytest.raises(StoreError) as caught:
                await call(BOOM, [], [])
            errors.append(caught.value)
        assert not any(isinstance(error, StoreUnavailable) for error in errors)  # a refusal, not an outage
        assert str(errors[0]) == str(errors[1])
        assert (await echo(base, 4))[0] == "4"  # the connection carries on after an error reply
    finally:
        await closed(base)


async def test_a_caller_cancelled_mid_flight_leaves_every_other_caller_its_own_reply(
    private_redis: RedisServer, fault_proxy: Callable[[int], FaultProxy]
) -> None:
    """Replies go to waiters in order; a waiter that left has its reply read and dropped, on the
    same connection (closing it would cost every other caller its reply too)."""
    proxy = fault_proxy(private_redis.port)
    base = RedisBase(proxy.url + "?socket_timeout=5")
    try:
        assert (await echo(base, 0))[0] == "0"
        first = connection(base)
        proxy.delay(0.3)  # replies held: the callers below are all waiting at once
        calls = {n: asyncio.ensure_future(echo(base, n)) for n in range(1, 41)}
        await asyncio.sleep(0.1)
        cancelled = set(random.Random(12).sample(sorted(calls), 15)) | {1}
        for n in cancelled:
            calls[n].cancel()
        for n, call in calls.items():
            if n in cancelled:
                with pytest.raises(asyncio.CancelledError):
                    await call
            else:
                assert await call == [str(n), n, ["n", str(n)]]
        proxy.heal()
        assert [(await echo(base, n))[1] for n in range(100, 110)] == list(range(100, 110))
        assert connection(base) is first  # not reconnected: nothing went wrong with it
    finally:
        await closed(base)


async def test_a_paused_redis_fails_every_waiter_at_the_timeout_then_works_again(private_redis: RedisServer) -> None:
    base = RedisBase(private_redis.url + "?socket_timeout=0.3")
    loop = asyncio.get_running_loop()
    try:
        await echo(base, 0)
        private_redis.pause()
        try:
            started = loop.time()
            results = await asyncio.gather(*(echo(base, n) for n in range(5)), return_exceptions=True)
            waited = loop.time() - started
        finally:
            private_redis.resume()
        assert all(isinstance(result, StoreUnavailable) for result in results), results
        assert 0.25 < waited < 2.0
        assert [(await echo(base, n))[1] for n in range(10, 15)] == list(range(10, 15))
    finally:
        await closed(base)


async def test_replies_that_come_in_time_never_close_a_busy_connection_and_a_late_one_still_does(
    private_redis: RedisServer,
) -> None:
    """One timer watches the oldest waiter's due time (not one per command): commands sent for
    longer than the timeout, each answered, keep the connection; the first reply overdue after
    them closes it at its own due time."""
    base = RedisBase(private_redis.url + "?socket_timeout=0.3")
    loop = asyncio.get_running_loop()
    try:
        await echo(base, 0)
        first = connection(base)
        ends = loop.time() + 1.0

        async def busy(start: int) -> None:  # four callers: a command is nearly always in flight
            n = start
            while loop.time() < ends:
                n += 4
                assert (await echo(base, n))[1] == n

        await asyncio.gather(*(busy(start) for start in range(4)))
        assert connection(base) is first and first is not None and not first.closed
        private_redis.pause()
        try:
            started = loop.time()
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(echo(base, -1), 5.0)
            waited = loop.time() - started
        finally:
            private_redis.resume()
        assert 0.25 < waited < 1.0
        assert first.closed
        assert (await echo(base, 7))[1] == 7
    finally:
        await closed(base)


async def test_a_blackholed_connection_times_out_and_a_new_one_serves(
    private_redis: RedisServer, fault_proxy: Callable[[int], FaultProxy]
) -> None:
    proxy = fault_proxy(private_redis.port)
    base = RedisBase(proxy.url + "?socket_timeout=0.3&socket_connect_timeout=0.3")
    try:
        await echo(base, 0)
        proxy.blackhole()
        with pytest.raises(StoreUnavailable):
            await echo(base, 1)
        with pytest.raises(StoreUnavailable):  # the new connection hangs as well
            await echo(base, 2)
        proxy.heal()
        assert (await echo(base, 3))[1] == 3
    finally:
        await closed(base)


async def test_a_killed_and_restarted_redis_is_reconnected(private_redis: RedisServer) -> None:
    base = RedisBase(private_redis.url)
    try:
        await echo(base, 0)
        private_redis.kill()
        with pytest.raises(StoreUnavailable):
            await echo(base, 1)
        with pytest.raises(StoreUnavailable):  # refused while it is down
            await echo(base, 2)
        await asyncio.to_thread(private_redis.start)
        assert (await echo(base, 3))[1] == 3  # and its script cache is empty: NOSCRIPT, then EVAL
    finally:
        await closed(base)


async def test_noscript_after_a_script_flush_falls_back_to_eval(private_redis: RedisServer) -> None:
    base = RedisBase(private_redis.url)
    try:
        await echo(base, 0)
        private_redis.call("SCRIPT", "FLUSH")
        assert private_redis.call("SCRIPT", "EXISTS", ECHO.sha) == [0]
        assert (await echo(base, 1))[1] == 1
        assert private_redis.call("SCRIPT", "EXISTS", ECHO.sha) == [1]  # cached again by the EVAL
    finally:
        await closed(base)


async def test_the_url_s_password_user_and_database_are_used(redis_servers: Callable[..., RedisServer]) -> None:
    server = redis_servers()
    server.call("CONFIG", "SET", "requirepass", "s3cret")  # after start: its readiness check has no password
    keyed = script("redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])", "keyed")
    for url, value in ((f"redis://:s3cret@127.0.0.1:{server.port}/3", "a"),
                       (f"redis://default:s3cret@127.0.0.1:{server.port}/3", "b")):  # fmt: skip
        base = RedisBase(url)
        try:
            assert await base._hot_script(keyed, ["thin-key"], [value]) == value
            assert connection(base) is not None
        finally:
            await closed(base)
        with redis.Redis(port=server.port, password="s3cret", db=3, decode_responses=True) as client:
            assert client.get("thin-key") == value
    wrong = RedisBase(f"redis://:nope@127.0.0.1:{server.port}/3")
    try:
        with pytest.raises(StoreUnavailable):
            await wrong._hot_script(keyed, ["thin-key"], ["c"])
    finally:
        await closed(wrong)


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:6379/0",
        "unix:///tmp/redis.sock",
        "redis+cluster://127.0.0.1:7000",
        "redis://127.0.0.1:6379/0?client_name=gw",
        "redis://127.0.0.1:6379/0?protocol=3",
    ],
)
def test_urls_the_thin_client_does_not_serve_stay_on_redis_py(url: str) -> None:
    assert endpoint(url, timeout=2.0, connect_timeout=2.0) is None


def test_the_url_s_timeouts_are_used() -> None:
    server = endpoint("redis://h:7/2?socket_timeout=0.5&max_connections=9", timeout=2.0, connect_timeout=3.0)
    assert server is not None
    assert (server.host, server.port, server.db, server.timeout, server.connect_timeout) == ("h", 7, 2, 0.5, 3.0)


async def test_closing_the_store_closes_the_thin_connection(redis_url: str) -> None:
    store = RedisStore(redis_url, key_prefix="mg-test-resp")
    await echo(store, 1)
    open_connection = connection(store)
    assert open_connection is not None and not open_connection.closed
    await store.aclose()
    assert open_connection.closed
    with pytest.raises(StoreUnavailable):  # late work of a closed gateway opens nothing
        await echo(store, 2)


# cluster: the thin path per node, redis-py for what needs the cluster's knowledge ----------------

INCR = script("return redis.call('INCR', KEYS[1])", "incr")


async def test_cluster_a_moved_slot_is_followed_by_redis_py_then_served_thin_by_its_new_node(
    private_cluster: ClusterHarness,
) -> None:
    store = RedisClusterStore(private_cluster.url + "?socket_timeout=2", key_prefix=f"thin-{uuid.uuid4().hex[:6]}")
    key = f"{store._tag('moved')}:s"
    slot = private_cluster.slot_of(key)
    try:
        assert await store._hot_script(INCR, [key], []) == 1
        source = private_cluster.node_for_slot(slot)
        assert set(store._thins) == {source.address}
        _, target = await asyncio.to_thread(private_cluster.open_slot, slot)
        await asyncio.to_thread(private_cluster.close_slot, slot, finish=True)
        assert await store._hot_script(INCR, [key], []) == 2  # MOVED on the thin connection: redis-py followed it
        assert await store._hot_script(INCR, [key], []) == 3
        assert target.address in store._thins  # the slot map was updated: the third call went thin to the target
    finally:
        await store.aclose()


async def test_cluster_a_node_that_stalled_is_tried_through_redis_py_then_thin_again(
    private_cluster: ClusterHarness,
) -> None:
    store = RedisClusterStore(private_cluster.url + "?socket_timeout=0.3", key_prefix=f"thin-{uuid.uuid4().hex[:6]}")
    key = f"{store._tag('stalled')}:s"
    node = private_cluster.node_for_key(key)
    try:
        assert await store._hot_script(INCR, [key], []) == 1
        thin = store._thins[node.address]
        node.pause()
        try:
            with pytest.raises(StoreUnavailable):
                await store._hot_script(INCR, [key], [])
        finally:
            node.resume()
        assert node.address in store._suspects  # redis-py gets the next call: it reloads the map if the node is gone
        assert await store._hot_script(INCR, [key], []) >= 2  # the stalled INCR ran at resume
        assert not store._suspects
        first = thin._connection
        await store._hot_script(INCR, [key], [])
        assert thin._connection is not None and thin._connection is not first  # thin again, on a new connection
    finally:
        await store.aclose()
