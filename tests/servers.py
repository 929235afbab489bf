"""Private Redis servers and Redis Clusters for fault tests, and the pytest fixtures that own them.

A fault test needs a server of its own: it kills, pauses or reshards it, which the shared
servers of ``make test`` must never suffer. Every server here runs on a free port in a
directory of its own, is a child of the test process, and is stopped at teardown whatever the
test did to it (resumed first if paused). Started from the main thread, a server also gets
SIGKILL when the test process dies (``setpriv --pdeathsig``), so even a killed pytest leaves
no redis-server behind.

The helpers are synchronous (subprocess and redis-py's blocking client): from an async test,
run the slow ones (``restart``, ``wait_stable``, ``Migration.wait``) with ``asyncio.to_thread``
or drive the load in its own thread (tests/load.py ``BackgroundLoad``), so that a wait here
never stalls requests in flight.

Fixtures (registered in tests/conftest.py):

- ``redis_servers``: a factory, ``redis_servers(appendonly="yes", ...) -> RedisServer``, started;
- ``private_redis``: one started server with AOF fsync'd on every write (``appendfsync always``);
- ``cluster_factory``: ``cluster_factory(masters=3, replicas=0, appendonly=False) -> ClusterHarness``;
- ``private_cluster``: a 3-master cluster shared by the tests of one module, checked before each
  test and rebuilt when a test left it changed (open slot, extra node, node down or paused).
"""

from __future__ import annotations

import atexit
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

HOST = "127.0.0.1"
# Ports are drawn below the kernel's ephemeral range (32768-60999 here), bus ports included
# (port + 10000), so that no outgoing connection of the suite can take one between the check
# and redis-server's bind. Collisions with other servers are caught at bind and retried.
PORT_RANGE = (11000, 22000)
CLUSTER_BUS_OFFSET = 10000
START_ATTEMPTS = 8
Options = Mapping[str, str | int]

_LIVE: set[RedisServer] = set()  # stopped at exit, should a teardown not have run


def _port_is_free(port: int) -> bool:
    with closing(socket.socket()) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_port(*, cluster: bool = False) -> int:
    """A port nothing listens on (and, for a cluster node, its bus port too)."""
    for _ in range(1000):
        port = random.randrange(*PORT_RANGE)
        if _port_is_free(port) and (not cluster or _port_is_free(port + CLUSTER_BUS_OFFSET)):
            return port
    raise RuntimeError("no free port found")


class ServerError(RuntimeError):
    pass


class RedisServer:
    """One redis-server process, child of this process, on a free port in ``directory``.

    ``options`` are redis.conf directives (``{"appendonly": "yes", "appendfsync": "always"}``);
    by default nothing is saved (``save ""``, ``appendonly no``). The port is kept for the
    server's life, across ``restart``.
    """

    def __init__(self, directory: Path, options: Options | None = None, *, port: int | None = None) -> None:
        self.directory = directory
        self.options: dict[str, str] = {"save": "", "appendonly": "no"}
        self.options.update({name: str(value) for name, value in (options or {}).items()})
        self.cluster = self.options.get("cluster-enabled") == "yes"
        self._chosen_port = port is not None
        self.port = port if port is not None else pick_port(cluster=self.cluster)
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._log_offset = 0

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<RedisServer {HOST}:{self.port} {state}>"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # lifecycle ------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start and wait until it answers PING with its data loaded. A port lost to another
        process at bind is replaced by a new free one, unless the caller chose the port."""
        if self.running:
            raise ServerError(f"{self!r} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(START_ATTEMPTS):
            self._spawn()
            try:
                self.wait_ready(timeout)
                return self
            except ServerError:
                log = self._log_since_spawn()[-3000:]
                self._reap()
                if self._chosen_port or "Address already in use" not in log or attempt == START_ATTEMPTS - 1:
                    raise ServerError(f"redis-server on {self.port} did not start:\n{log}") from None
                self.port = pick_port(cluster=self.cluster)
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful: SIGTERM, which makes Redis fsync its AOF and exit (SIGKILL after ``timeout``)."""
        if not self.running:
            self._reap()
            return
        self.resume()
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: a crash. What the AOF had not written is lost, as in production."""
        if self.running:
            assert self.process is not None
            self.process.kill()
        self._reap()

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Stop (gracefully) if running, start again on the same port and directory, and wait
        until it answers with its AOF loaded (``INFO persistence`` ``loading:0``)."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the process hangs; the kernel still accepts connections and buffers
        commands, which run at ``resume()`` (the case of a stalled or swapping server)."""
        if self.running and not self.paused:
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.running and self.paused:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def __enter__(self) -> RedisServer:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # talking to it --------------------------------------------------------------------------------

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A blocking redis-py client (``with server.client() as c:``, so its socket is closed)."""
        # No retries: redis-py 8 retries 3 times with backoff by default, which turns a dead
        # server into a 20 s wait and a command sent once into one sent twice.
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=timeout,
                           socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))  # fmt: skip

    def call(self, *args: str | int, timeout: float = 5.0, asking: bool = False) -> Any:
        """One command on a fresh connection (no pool left open behind). ``asking``: preceded by
        ASKING on the same connection, as a cluster client does after an ASK redirection (an
        importing node answers MOVED without it)."""
        with self.client(timeout) as client:
            if not asking:
                return client.execute_command(*args)
            with client.pipeline(transaction=False) as pipe:
                pipe.execute_command("ASKING")
                pipe.execute_command(*args)
                return pipe.execute()[1]

    def info(self, section: str) -> dict[str, str]:
        with self.client(2.0) as client:
            return {name: str(value) for name, value in client.info(section).items()}

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running or "Failed listening on port" in self._log_since_spawn():
                raise ServerError(f"redis-server on {self.port} exited")
            try:
                # a short timeout: a loading server answers at once (-LOADING), and whatever else
                # holds the port must not hold the start up for long
                with self.client(0.5) as client:
                    if client.info("persistence").get("loading") == 0:
                        return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            time.sleep(0.02)
        raise ServerError(f"redis-server on {self.port} not ready after {timeout} s")

    def _log_since_spawn(self) -> str:
        try:
            with (self.directory / "redis.log").open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.directory / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # internals ------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        args = ["redis-server", "--bind", HOST, "--port", str(self.port), "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log")]  # fmt: skip
        for name, value in self.options.items():
            args += [f"--{name}", value]
        log = self.directory / "redis.log"
        self._log_offset = log.stat().st_size if log.exists() else 0  # this run's lines start here
        setpriv = shutil.which("setpriv")
        # The parent-death signal is tied to the thread that forks: only the main thread lives
        # as long as the test process (a to_thread worker would take the server down with it).
        if setpriv and threading.current_thread() is threading.main_thread():
            args = [setpriv, "--pdeathsig", "KILL", "--", *args]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for pytest reaches the teardown, not the server
        )  # fmt: skip
        _LIVE.add(self)

    def _reap(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
        self.paused = False
        _LIVE.discard(self)


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.kill()


# Redis Cluster ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES as a node sees it."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]  # owned, as inclusive ranges
    migrating: dict[int, str]  # slot -> target node id
    importing: dict[int, str]  # slot -> source node id

    @property
    def is_master(self) -> bool:
        return "master" in self.flags


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    nodes = []
    for line in text.strip().splitlines():
        fields = line.split()
        node_id, address, flags, master = fields[0], fields[1], fields[2], fields[3]
        slots: list[tuple[int, int]] = []
        migrating: dict[int, str] = {}
        importing: dict[int, str] = {}
        for token in fields[8:]:
            if token.startswith("["):  # [slot->-target] or [slot-<-source]
                slot, arrow, other = re.fullmatch(r"\[(\d+)-([<>])-(\w+)\]", token).groups()  # type: ignore[union-attr]
                (migrating if arrow == ">" else importing)[int(slot)] = other
            else:
                low, _, high = token.partition("-")
                slots.append((int(low), int(high or low)))
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        nodes.append(ClusterNode(node_id, port, frozenset(flags.split(",")), None if master == "-" else master,
                                 tuple(sorted(slots)), migrating, importing))  # fmt: skip
    return nodes


class Migration:
    """A ``redis-cli --cluster`` command running in the background (reshard, rebalance).

    Its output goes to a file: a reshard prints a line per key moved, more than a pipe holds.
    """

    def __init__(self, harness: ClusterHarness, args: Sequence[str], log: Path) -> None:
        self.harness = harness
        self.args = list(args)
        self.log = log
        self.started = time.monotonic()
        self.finished: float | None = None
        with log.open("wb") as out:
            self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        harness._migrations.append(self)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 120.0, *, stable: bool = True) -> str:
        """Wait for redis-cli to end (raises unless it succeeded), then, with ``stable``, until
        every node agrees on the new slot map. Returns redis-cli's output."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerError(f"{' '.join(self.args)} still running after {timeout} s") from None
        self.finished = self.finished or time.monotonic()
        if code != 0:
            raise ServerError(f"{' '.join(self.args)} exited {code}:\n{self.output[-3000:]}")
        if stable:
            self.harness.wait_stable()
        return self.output

    def kill(self) -> None:
        """Stop redis-cli where it is: whatever slot it was moving stays open."""
        if self.running:
            self.process.kill()
        self.process.wait()
        self.finished = self.finished or time.monotonic()


class ClusterHarness:
    """A private Redis Cluster: ``masters`` masters (and ``replicas`` replicas per master) on
    free ports under ``directory``, formed by ``redis-cli --cluster create``."""

    def __init__(
        self,
        directory: Path,
        masters: int = 3,
        *,
        replicas: int = 0,
        appendonly: bool = False,
        node_timeout_ms: int = 5000,
        options: Options | None = None,
    ) -> None:
        self.directory = directory
        self.masters_count = masters
        self.replicas = replicas
        self.node_options: dict[str, str | int] = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": node_timeout_ms,
            "appendonly": "yes" if appendonly else "no",
            **(options or {}),
        }
        self.nodes: list[RedisServer] = []
        self._ids: dict[int, str] = {}  # port -> node id
        self._migrations: list[Migration] = []
        self._added = 0  # nodes added after creation

    def __repr__(self) -> str:
        return f"<ClusterHarness {', '.join(node.address for node in self.nodes)}>"

    # lifecycle ------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> ClusterHarness:
        count = self.masters_count * (1 + self.replicas)
        for _ in range(count):
            self.nodes.append(self._new_node().start())
        self._cli("--cluster", "create", *(node.address for node in self.nodes),
                  "--cluster-replicas", str(self.replicas), "--cluster-yes", timeout=timeout)  # fmt: skip
        self.wait_stable(timeout)
        return self

    def stop(self) -> None:
        """Stop every node and every redis-cli still running; always safe to call."""
        for migration in self._migrations:
            migration.kill()
        for node in self.nodes:
            node.resume()
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ClusterHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``redis+cluster://`` over every master that is up, as meterguard wants it."""
        masters = [node for node in self.nodes if node.running and self.is_master(node)]
        return "redis+cluster://" + ",".join(node.address for node in masters or self.nodes)

    # topology -------------------------------------------------------------------------------------

    def node_id(self, node: RedisServer) -> str:
        if node.port not in self._ids:
            self._ids[node.port] = str(node.call("CLUSTER", "MYID"))
        return self._ids[node.port]

    def node_by_id(self, node_id: str) -> RedisServer:
        for node in self.nodes:
            if self.node_id(node) == node_id:
                return node
        raise KeyError(node_id)

    def view(self, node: RedisServer | None = None) -> list[ClusterNode]:
        """CLUSTER NODES as ``node`` (default: the first one up) sees it."""
        node = node or self._any_node()
        return parse_cluster_nodes(str(node.call("CLUSTER", "NODES")))

    def is_master(self, node: RedisServer) -> bool:
        return any(entry.port == node.port and entry.is_master for entry in self.view())

    def masters(self) -> list[RedisServer]:
        ports = {entry.port for entry in self.view() if entry.is_master and "fail" not in entry.flags}
        return [node for node in self.nodes if node.port in ports]

    @staticmethod
    def slot_of(key: str | bytes) -> int:
        return int(key_slot(key.encode() if isinstance(key, str) else key))

    def node_for_slot(self, slot: int) -> RedisServer:
        """The master that owns ``slot`` (an open slot is still owned by its source)."""
        for entry in self.view():
            if entry.is_master and any(low <= slot <= high for low, high in entry.slots):
                return self.node_by_id(entry.id)
        raise KeyError(f"slot {slot} is not covered")

    def node_for_key(self, key: str) -> RedisServer:
        return self.node_for_slot(self.slot_of(key))

    def slots_of(self, node: RedisServer) -> list[int]:
        entry = next(entry for entry in self.view() if entry.port == node.port)
        return [slot for low, high in entry.slots for slot in range(low, high + 1)]

    def open_slots(self) -> dict[int, tuple[str | None, str | None]]:
        """Slots some node marks MIGRATING or IMPORTING: slot -> (source id, target id)."""
        found: dict[int, tuple[str | None, str | None]] = {}
        for node in self._live_nodes():
            myself = next(entry for entry in self.view(node) if "myself" in entry.flags)
            for slot, target in myself.migrating.items():
                found[slot] = (myself.id, found.get(slot, (None, None))[1] or target)
            for slot, source in myself.importing.items():
                found[slot] = (found.get(slot, (None, None))[0] or source, myself.id)
        return found

    # waiting ----------------------------------------------------------------------------------------

    def agreement(self) -> str | None:
        """None when every live node says cluster_state:ok and all of them see the same slot map
        and the same set of nodes; else what is still off."""
        maps = {}
        for node in self._live_nodes():
            try:
                info = str(node.call("CLUSTER", "INFO"))
                if "cluster_state:ok" not in info:
                    return f"{node.address}: cluster_state not ok"
                view = self.view(node)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                return f"{node.address}: {exc}"
            maps[node.port] = (
                sorted((entry.id, entry.slots) for entry in view if entry.is_master),
                sorted(entry.id for entry in view),
            )
        if len(set(map(repr, maps.values()))) > 1:
            return "nodes disagree on the slot map"
        return None

    def wait_stable(self, timeout: float = 30.0) -> None:
        """Until cluster_state:ok everywhere and every node agrees on the slot map."""
        deadline = time.monotonic() + timeout
        while (problem := self.agreement()) is not None:
            if time.monotonic() > deadline:
                raise ServerError(f"cluster not stable after {timeout} s: {problem}")
            time.sleep(0.05)

    def healthy(self) -> str | None:
        """None when the cluster is as ``start()`` left it (node count, all up, stable, no open
        slot, no redis-cli running); else the reason. The slot layout itself may have changed."""
        if self._added or len(self.nodes) != self.masters_count * (1 + self.replicas):
            return "nodes were added"
        if any(node.paused or not node.running for node in self.nodes):
            return "a node is down or paused"
        if any(migration.running for migration in self._migrations):
            return "a redis-cli migration is still running"
        try:
            if self.open_slots():
                return "a slot is open"
            problem = self.agreement()
            if problem is None and len(self.masters()) != self.masters_count:
                return "masters changed"
            return problem
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return str(exc)

    # changing the topology --------------------------------------------------------------------------

    def add_empty_master(self, timeout: float = 30.0) -> RedisServer:
        """Start a node and join it as a master without slots (``redis-cli --cluster add-node``)."""
        node = self._new_node().start()
        self.nodes.append(node)
        self._added += 1
        self._cli("--cluster", "add-node", node.address, self._any_node().address, timeout=timeout)
        self.wait_stable(timeout)
        return node

    def rebalance(self, *, use_empty_masters: bool = True, extra: Sequence[str] = ()) -> Migration:
        """``redis-cli --cluster rebalance`` in the background. On a cluster without slot
        weights this moves about 16384/masters slots to a new master: some seconds."""
        args = ["--cluster", "rebalance", self._any_node().address, *extra]
        if use_empty_masters:
            args.append("--cluster-use-empty-masters")
        return self._background("rebalance", args)

    def reshard(self, source_id: str, target_id: str, slots: int, *, extra: Sequence[str] = ()) -> Migration:
        """``redis-cli --cluster reshard`` of ``slots`` slots from one master to another, in the
        background (``extra`` e.g. ``["--cluster-pipeline", "1"]`` to move keys one by one)."""
        args = ["--cluster", "reshard", self._any_node().address, "--cluster-from", source_id,
                "--cluster-to", target_id, "--cluster-slots", str(slots), "--cluster-yes", *extra]  # fmt: skip
        return self._background("reshard", args)

    def open_slot(self, slot: int, target: RedisServer | None = None) -> tuple[RedisServer, RedisServer]:
        """What ``redis-cli --cluster reshard`` does first for a slot, and no more: IMPORTING on
        the target, then MIGRATING on the source. The slot stays open, its keys where they
        are, until ``close_slot`` or ``fix``. Returns (source, target)."""
        source = self.node_for_slot(slot)
        if target is None:
            target = next(node for node in self.masters() if node is not source)
        target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source, target

    def close_slot(self, slot: int, *, finish: bool = False, replace: bool = False) -> None:
        """Close an open slot. ``finish=False``: abort, the slot stays with its source (keys a
        client wrote on the target meanwhile stay there, unreachable). ``finish=True``: what
        redis-cli does next: MIGRATE every key still on the source (``replace``: overwriting the
        target's; without it a key on both raises BUSYKEY, as redis-cli stops), then assign
        the slot to the target on every master."""
        opened = self.open_slots().get(slot)
        if opened is None:
            raise ServerError(f"slot {slot} is not open")
        source_id, target_id = opened
        source = self.node_by_id(source_id) if source_id else self.node_for_slot(slot)
        target = self.node_by_id(target_id) if target_id else None
        if not finish:
            for node in (source, target):
                if node is not None:
                    node.call("CLUSTER", "SETSLOT", slot, "STABLE")
            return
        if target is None:
            raise ServerError(f"slot {slot} has no importing node to finish on")
        while keys := source.call("CLUSTER", "GETKEYSINSLOT", slot, 100):
            command: list[str | int] = ["MIGRATE", HOST, target.port, "", 0, 5000]
            if replace:
                command.append("REPLACE")
            source.call(*command, "KEYS", *keys)
        target_id = self.node_id(target)
        for node in (target, source, *(node for node in self.masters() if node not in (source, target))):
            node.call("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_stable()

    def fix(self, timeout: float = 60.0) -> str:
        """``redis-cli --cluster fix`` (what an operator runs after a failed reshard); waits."""
        output = self._cli("--cluster", "fix", self._any_node().address, "--cluster-yes", timeout=timeout, check=False)
        self.wait_stable(timeout)
        return output

    # internals --------------------------------------------------------------------------------------

    def _new_node(self) -> RedisServer:
        index = len(self.nodes)
        return RedisServer(self.directory / f"node{index}", self.node_options)

    def _live_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.running and not node.paused]

    def _any_node(self) -> RedisServer:
        live = self._live_nodes()
        if not live:
            raise ServerError("no node of the cluster is up")
        return live[0]

    def _cli(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        done = subprocess.run(["redis-cli", *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        if check and done.returncode != 0:
            raise ServerError(
                f"redis-cli {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr}"
            )
        return done.stdout + done.stderr

    def _background(self, name: str, args: Sequence[str]) -> Migration:
        log = self.directory / f"{name}-{len(self._migrations)}.log"
        return Migration(self, ["redis-cli", *args], log)


# fixtures -----------------------------------------------------------------------------------------


RedisFactory = Callable[..., RedisServer]
ClusterFactory = Callable[..., ClusterHarness]


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[RedisFactory]:
    """``redis_servers(**options) -> RedisServer``, started; option names as in redis.conf,
    with ``-`` or ``_`` (``appendfsync="always"``). Every server made is stopped at teardown."""
    made: list[RedisServer] = []

    def make(**options: str | int) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(made)}", {name.replace("_", "-"): v for name, v in options.items()})
        made.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in made:
            server.stop()


@pytest.fixture
def private_redis(redis_servers: RedisFactory) -> RedisServer:
    """A started redis-server of this test's own, AOF on and fsync'd on every write."""
    return redis_servers(appendonly="yes", appendfsync="always")


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    """``cluster_factory(masters=3, replicas=0, appendonly=False, ...) -> ClusterHarness``,
    started (a few seconds each); every cluster made is stopped at teardown."""
    made: list[ClusterHarness] = []

    def make(masters: int = 3, **kwargs: Any) -> ClusterHarness:
        harness = ClusterHarness(tmp_path / f"cluster{len(made)}", masters, **kwargs)
        made.append(harness)
        return harness.start()

    try:
        yield make
    finally:
        for harness in made:
            harness.stop()


class _SharedCluster:
    """The module's cluster, rebuilt when a test left it changed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.harness: ClusterHarness | None = None
        self.built = 0

    def get(self) -> ClusterHarness:
        if self.harness is not None and self.harness.healthy() is not None:
            self.harness.stop()
            self.harness = None
        if self.harness is None:
            self.harness = ClusterHarness(self.directory / f"cluster{self.built}", 3)
            self.built += 1
            try:
                self.harness.start()
            except BaseException:
                self.harness.stop()
                self.harness = None
                raise
        return self.harness

    def close(self) -> None:
        if self.harness is not None:
            self.harness.stop()


@pytest.fixture(scope="module")
def _module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_SharedCluster]:
    shared = _SharedCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def private_cluster(_module_cluster: _SharedCluster) -> Iterator[ClusterHarness]:
    """A healthy 3-master cluster, shared by the tests of a module (it costs a few seconds to
    form). A test may reshard, open slots, add masters, kill or pause nodes: at teardown paused
    nodes are resumed and redis-cli runs stopped, and the next test gets a new cluster unless
    this one is still as it was formed. Keys are not cleared: use unique names."""
    harness = _module_cluster.get()
    try:
        yield harness
    finally:
        for migration in harness._migrations:
            migration.kill()
        for node in harness.nodes:
            node.resume()
