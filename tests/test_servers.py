"""The private servers of tests/servers.py do what fault tests rely on: a crash with AOF loses
nothing, a paused server runs its buffered commands at resume, nothing outlives its test, and a
cluster's slots can be opened, moved and rebalanced while clients write."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from meterguard.store.base import CustomerRecord
from meterguard.store.cluster import RedisClusterStore

from . import servers
from .servers import ClusterFactory, ClusterHarness, RedisFactory, RedisServer, ServerError, parse_cluster_nodes


def alive(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_crash_with_appendfsync_always_loses_nothing(redis_servers: RedisFactory) -> None:
    server = redis_servers(appendonly="yes", appendfsync="always")
    port, first_pid = server.port, server.pid
    with server.client() as client:
        for _ in range(200):
            client.incr("n")
    server.kill()
    assert not alive(first_pid)
    server.restart()
    assert (server.port, server.url) == (port, f"redis://127.0.0.1:{port}/0")
    assert server.pid != first_pid
    assert server.call("GET", "n") == "200"
    assert server.info("persistence")["loading"] == "0"


def test_a_crash_without_aof_loses_everything(redis_servers: RedisFactory) -> None:
    """The control for the test above: the data came back from the AOF, not from anywhere else."""
    server = redis_servers()
    server.call("SET", "k", "v")
    server.kill()
    server.restart()
    assert server.call("GET", "k") is None


def test_a_paused_server_runs_buffered_commands_at_resume(redis_servers: RedisFactory) -> None:
    """SIGSTOP: the client times out, but its command waits in the socket and runs at SIGCONT
    (the case of a gateway that answered 503 for a call Redis then counted)."""
    server = redis_servers()
    with redis.Redis(port=server.port, socket_timeout=0.3, retry=Retry(NoBackoff(), 0)) as client:
        client.ping()
        server.pause()
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.incr("n")
        assert time.monotonic() - started < 2
    server.resume()
    assert server.call("GET", "n") == "1"


def test_stop_ends_a_paused_server_and_leaves_no_process(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r") as server:
        pid = server.pid
        server.pause()
    assert not alive(pid)
    assert not server.running
    server.stop()  # twice is harmless


def test_a_port_taken_before_the_bind_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, servers.pick_port()])
        monkeypatch.setattr(servers, "pick_port", lambda cluster=False: next(ports))
        with RedisServer(tmp_path / "r") as server:
            assert server.port != busy
            assert server.call("PING") is True
        with pytest.raises(ServerError, match="Address already in use"):
            RedisServer(tmp_path / "chosen", port=busy).start()


def test_cluster_nodes_lines_are_parsed_with_open_slots() -> None:
    text = (
        "a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 [5461->-b2]\n"
        "b2 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922 12000\n"
        "c3 127.0.0.1:7003@17003 slave b2 0 1 2 connected\n"
    )
    a, b, c = parse_cluster_nodes(text)
    assert (a.id, a.port, a.slots, a.migrating, a.is_master) == ("a1", 7001, ((0, 5460),), {5461: "b2"}, True)
    assert b.slots == ((5461, 10922), (12000, 12000))
    assert (c.is_master, c.master_id) == (False, "b2")


# cluster --------------------------------------------------------------------------------------------


def test_keys_live_on_the_node_that_owns_their_slot(private_cluster: ClusterHarness) -> None:
    host, port = private_cluster.url.removeprefix("redis+cluster://").split(",")[0].split(":")
    with RedisCluster(host=host, port=int(port), decode_responses=True) as client:
        for i in range(30):
            client.set(f"route-{i}", i)
    for i in range(30):
        key = f"route-{i}"
        owner = private_cluster.node_for_key(key)
        assert owner.call("GET", key) == str(i)
        slot = private_cluster.slot_of(key)
        others = [node for node in private_cluster.nodes if node is not owner]
        assert [node.call("CLUSTER", "COUNTKEYSINSLOT", slot) for node in others] == [0, 0]
    assert private_cluster.slot_of("{c:acme}:p") == private_cluster.slot_of("{c:acme}:d")


async def test_meterguard_reaches_the_cluster_by_its_url(private_cluster: ClusterHarness) -> None:
    store = RedisClusterStore(private_cluster.url, key_prefix="servers-test")
    try:
        await store.create_customer(CustomerRecord("acme", "pro"))
        assert (record := await store.get_customer("acme")) is not None and record.plan == "pro"
        assert private_cluster.node_for_key("servers-test:{c:acme}:customer").call(
            "EXISTS", "servers-test:{c:acme}:customer"
        )
    finally:
        await store.aclose()


def test_an_open_slot_sends_new_keys_to_the_target_and_closes_as_redis_cli_would(
    private_cluster: ClusterHarness,
) -> None:
    tag = f"{{c:open-{time.monotonic_ns()}}}"
    slot = private_cluster.slot_of(tag)
    host, port = private_cluster.url.removeprefix("redis+cluster://").split(",")[0].split(":")
    with RedisCluster(host=host, port=int(port), decode_responses=True) as client:
        client.set(f"{tag}:old", "on the source")
        source, target = private_cluster.open_slot(slot)
        assert private_cluster.open_slots() == {
            slot: (private_cluster.node_id(source), private_cluster.node_id(target))
        }
        assert private_cluster.healthy() == "a slot is open"
        assert private_cluster.node_for_slot(slot) is source  # still owned by the source
        client.set(f"{tag}:new", "asked to the target")  # missing on the source: ASK -> target
        client.set(f"{tag}:old", "updated on the source")
    assert target.call("GET", f"{tag}:new", asking=True) == "asked to the target"
    assert source.call("GET", f"{tag}:old") == "updated on the source"
    target.call("SET", f"{tag}:old", "a stale copy", asking=True)  # a key on both nodes: redis-cli stops at BUSYKEY
    with pytest.raises(redis.ResponseError, match="BUSYKEY"):
        private_cluster.close_slot(slot, finish=True)
    private_cluster.close_slot(slot, finish=True, replace=True)
    assert private_cluster.node_for_slot(slot) is target
    assert target.call("GET", f"{tag}:old") == "updated on the source"
    assert private_cluster.healthy() is None


def test_a_reshard_runs_in_the_background_while_clients_write(private_cluster: ClusterHarness) -> None:
    source, target = private_cluster.masters()[:2]
    moving = len(private_cluster.slots_of(source))
    before = len(private_cluster.slots_of(target))
    host, port = private_cluster.url.removeprefix("redis+cluster://").split(",")[0].split(":")
    with RedisCluster(host=host, port=int(port), decode_responses=True) as client:
        migration = private_cluster.reshard(private_cluster.node_id(source), private_cluster.node_id(target), 1000)
        assert migration.running
        writes = 0
        while migration.running:
            client.incr(f"{{w{writes % 50}}}:n")
            writes += 1
        migration.wait()
        assert writes > 0
        assert sum(int(client.get(f"{{w{i}}}:n") or 0) for i in range(50)) == writes
    assert len(private_cluster.slots_of(target)) == before + 1000
    assert len(private_cluster.slots_of(source)) == moving - 1000
    assert "Moving slot" in migration.output
    assert private_cluster.healthy() is None


def test_an_open_slot_is_closed_by_fix(private_cluster: ClusterHarness) -> None:
    source, target = private_cluster.masters()[:2]
    source_id, target_id = private_cluster.node_id(source), private_cluster.node_id(target)
    slot = private_cluster.slots_of(source)[0]
    private_cluster.open_slot(slot, target)
    output = private_cluster.fix()
    assert "open slot" in output.lower()
    assert private_cluster.open_slots() == {}
    assert private_cluster.healthy() is None
    assert {source_id, target_id} >= {private_cluster.node_id(private_cluster.node_for_slot(slot))}


def test_an_empty_master_is_added_and_rebalanced_onto(private_cluster: ClusterHarness) -> None:
    """Last in this module: it leaves 4 masters, so the next user of the fixture gets a new cluster."""
    new = private_cluster.add_empty_master()
    assert private_cluster.slots_of(new) == []
    assert new in private_cluster.masters()
    assert private_cluster.healthy() == "nodes were added"
    started = time.monotonic()
    # a weight of 0.1 against 1 for the others: ~530 slots move instead of 4096 (seconds saved)
    migration = private_cluster.rebalance(extra=["--cluster-weight", f"{private_cluster.node_id(new)}=0.1"])
    assert time.monotonic() - started < 1  # started, not waited for
    migration.wait()
    assert abs(len(private_cluster.slots_of(new)) - 16384 * 0.1 / 3.1) < 20
    assert new.address in private_cluster.url


def test_a_changed_shared_cluster_is_rebuilt_and_the_old_one_stopped(tmp_path: Path) -> None:
    shared = servers._SharedCluster(tmp_path)
    try:
        first = shared.get()
        assert shared.get() is first  # healthy: reused
        pids = [node.pid for node in first.nodes]
        first.open_slot(first.slots_of(first.nodes[0])[0])
        second = shared.get()
        assert second is not first and second.healthy() is None
        assert not any(alive(pid) for pid in pids)
    finally:
        shared.close()
    assert not any(node.running for node in second.nodes)


def test_cluster_factory_builds_clusters_with_replicas(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(masters=3, replicas=1)
    assert len(cluster.nodes) == 6 and len(cluster.masters()) == 3
    replicas = [entry for entry in cluster.view() if not entry.is_master]
    assert len(replicas) == 3 and all(entry.master_id for entry in replicas)
