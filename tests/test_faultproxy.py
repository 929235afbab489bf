"""Each mode of tests/faultproxy.py against a real redis-server, seen by redis-py and by raw
sockets. A proxy that only passed bytes through fails every test but the first: each asserts
the fault itself (a timeout, a reset rather than a clean close, a command that ran or did not)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .faultproxy import FaultProxy
from .servers import RedisFactory, RedisServer

ProxyFactory = Callable[[int], FaultProxy]


@pytest.fixture
def server(redis_servers: RedisFactory) -> RedisServer:
    return redis_servers()


@pytest.fixture
def proxy(server: RedisServer, fault_proxy: ProxyFactory) -> FaultProxy:
    return fault_proxy(server.port)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def client(proxy: FaultProxy, timeout: float = 0.5) -> redis.Redis:
    # No retries: redis-py's default would hide the fault behind a second attempt.
    return redis.Redis(port=proxy.port, socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), decode_responses=True)  # fmt: skip


def raw(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.sendall(b"PING\r\n")
    assert sock.recv(100) == b"+PONG\r\n"
    return sock


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_pass_through_serves_this_process_and_others(proxy: FaultProxy, server: RedisServer) -> None:
    with client(proxy) as c:
        assert c.set("k", "v") and c.get("k") == "v"
    done = subprocess.run(["redis-cli", "-p", str(proxy.port), "GET", "k"], capture_output=True, text=True)
    assert done.stdout.strip() == "v"
    stats = proxy.stats()
    assert stats.connections == 2 and stats.bytes_up > 0 and stats.bytes_down > 0
    assert stats.dropped_up == stats.dropped_down == stats.resets == 0


def test_delay_holds_replies_but_the_command_runs_at_once(
    proxy: FaultProxy, server: RedisServer, pool: ThreadPoolExecutor
) -> None:
    with client(proxy, timeout=2) as c:
        c.ping()
        proxy.delay(0.4)
        pending: Future[tuple[Any, float]] = pool.submit(timed, lambda: c.incr("n"))
        time.sleep(0.2)
        assert server.call("GET", "n") == "1"  # ran, while the client still waits
        value, seconds = pending.result()
        assert value == 1 and 0.4 <= seconds < 0.8


def test_delay_both_ways_holds_the_command_too(
    proxy: FaultProxy, server: RedisServer, pool: ThreadPoolExecutor
) -> None:
    with client(proxy, timeout=2) as c:
        c.ping()
        proxy.delay(0.3, both=True)
        pending = pool.submit(timed, lambda: c.incr("n"))
        time.sleep(0.15)
        assert server.call("GET", "n") is None  # not arrived yet
        value, seconds = pending.result()
        assert value == 1 and 0.6 <= seconds < 1.0
        proxy.heal()
        assert timed(c.ping)[1] < 0.2


def test_blackhole_times_out_and_nothing_runs(proxy: FaultProxy, server: RedisServer) -> None:
    with client(proxy, timeout=0.3) as c:
        c.ping()
        proxy.blackhole()
        with pytest.raises(redis.TimeoutError):
            c.incr("n")
    with client(proxy, timeout=0.3) as late, pytest.raises(redis.TimeoutError):
        late.ping()  # a new connection is accepted and hangs too
    assert proxy.stats().dropped_up > 0
    proxy.heal()
    with client(proxy) as c:
        assert c.ping()
    time.sleep(0.1)
    assert server.call("GET", "n") is None  # the INCR was lost, not late


def test_drop_replies_runs_the_command_and_the_client_never_hears(proxy: FaultProxy, server: RedisServer) -> None:
    with client(proxy, timeout=0.3) as c:
        c.ping()
        proxy.drop_replies()
        with pytest.raises(redis.TimeoutError):
            c.set("k", "set all the same")
    assert server.call("GET", "k") == "set all the same"
    assert proxy.stats().dropped_down > 0


def test_heal_resets_a_connection_that_lost_a_reply(proxy: FaultProxy, server: RedisServer) -> None:
    """Reusing it would hand the lost reply's successor to the wrong command."""
    with raw(proxy) as kept, raw(proxy) as lost:
        proxy.drop_replies()
        lost.sendall(b"INCR n\r\n")
        lost.settimeout(0.3)
        with pytest.raises(TimeoutError):
            lost.recv(100)
        proxy.heal()
        with pytest.raises(ConnectionResetError):
            lost.recv(100)
        kept.sendall(b"INCR n\r\n")  # lost nothing: carries on
        assert kept.recv(100) == b":2\r\n"


def test_reset_after_cuts_a_reply_with_a_reset_once(proxy: FaultProxy, server: RedisServer) -> None:
    server.call("SET", "big", "x" * 10_000)
    with raw(proxy) as sock:
        proxy.reset_after(100)
        sock.sendall(b"GET big\r\n")
        received = b""
        with pytest.raises(ConnectionResetError):  # a reset, not a clean close (recv would give b"")
            while chunk := sock.recv(65536):
                received += chunk
        assert len(received) <= 100 and b"$10000\r\n".startswith(received[:8])
    with client(proxy) as c:
        proxy.reset_after(10)
        with pytest.raises(redis.ConnectionError):
            c.get("big")
        assert c.get("big") == "x" * 10_000  # one-shot: a new connection works
    assert proxy.mode == "pass"
    assert proxy.stats().resets == 2


def test_reset_all_resets_open_connections_and_commands_in_flight(
    proxy: FaultProxy, server: RedisServer, pool: ThreadPoolExecutor
) -> None:
    with raw(proxy) as first, raw(proxy) as second, client(proxy, timeout=5) as c:
        c.ping()
        proxy.delay(2)
        pending = pool.submit(timed, lambda: c.incr("n"))
        time.sleep(0.2)
        assert proxy.reset_all() == 3
        with pytest.raises(redis.ConnectionError):
            pending.result()
        for sock in (first, second):
            with pytest.raises(ConnectionResetError):
                sock.recv(100)
    proxy.heal()
    with client(proxy) as c:
        assert c.get("n") == "1"  # the INCR had reached the server before the reset


def test_refuse_resets_new_connections_and_keeps_open_ones(proxy: FaultProxy) -> None:
    with raw(proxy) as kept:
        proxy.refuse()
        with client(proxy) as c, pytest.raises(redis.ConnectionError):
            c.ping()
        kept.sendall(b"PING\r\n")
        assert kept.recv(100) == b"+PONG\r\n"
        assert proxy.stats().refused == 1
        proxy.heal()
        with client(proxy) as c:
            assert c.ping()


def test_a_server_that_is_down_resets_clients_and_one_that_is_back_serves(
    proxy: FaultProxy, server: RedisServer
) -> None:
    server.stop()
    with client(proxy) as c, pytest.raises(redis.ConnectionError):
        c.ping()
    server.restart()
    with client(proxy) as c:
        assert c.ping()


def test_switches_are_safe_from_many_threads_while_traffic_flows(proxy: FaultProxy, server: RedisServer) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic() -> None:
        with client(proxy, timeout=0.2) as c:
            while not stop.is_set():
                try:
                    c.incr("n")
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                except BaseException as exc:  # anything else is a proxy bug
                    errors.append(exc)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for thread in threads:
        thread.start()
    for switch in [proxy.drop_replies, proxy.heal, lambda: proxy.delay(0.01), proxy.reset_all, proxy.blackhole] * 4:
        switch()
        time.sleep(0.02)
    proxy.heal()
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    with client(proxy) as c:
        assert int(c.get("n")) > 0
