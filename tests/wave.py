"""Truly concurrent HTTP load for concurrency tests.

An httpx pool lets requests out a few hundred a second, so a non-atomic read-then-increment
passes it every time. Here N keep-alive connections are opened first, then one request is
written on each of them at once, wave after wave (ARCHITECTURE.md, "Tests that can fail").
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class IncompleteReply(ConnectionError):
    """The server closed the connection before the reply was complete; ``status`` is the reply's
    status when its head had arrived (a response cut off after its headers), else 0."""

    def __init__(self, status: int) -> None:
        super().__init__(f"server closed the connection mid-response (status {status or 'not received'})")
        self.status = status


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host
        self.h11 = h11.Connection(our_role=h11.CLIENT)

    def request_bytes(self, path: str, headers: Mapping[str, str]) -> bytes:
        head = [("host", self.host), *headers.items()]
        data = self.h11.send(h11.Request(method="GET", target=path, headers=head)) or b""
        return data + (self.h11.send(h11.EndOfMessage()) or b"")

    async def read_reply(self) -> Reply:
        status, headers, body = 0, {}, bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                chunk = await self.reader.read(65536)
                self.h11.receive_data(chunk)
                if not chunk:
                    raise IncompleteReply(status)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {name.decode(): value.decode("latin-1") for name, value in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                # after "Connection: close" (either side) the connection is not reused: see idle
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return Reply(status, headers, bytes(body))

    @property
    def idle(self) -> bool:
        """Ready for the next request on this connection."""
        return self.h11.our_state is h11.IDLE and self.h11.their_state is h11.IDLE

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def connect(port: int, count: int, host: str = "127.0.0.1") -> list[Connection]:
    connections = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, port)
        connections.append(Connection(reader, writer, f"{host}:{port}"))
    return connections


async def wave(connections: Sequence[Connection], requests: Sequence[tuple[str, Mapping[str, str]]]) -> list[Reply]:
    """Write one request on each connection back to back, then read every reply."""
    payloads = [conn.request_bytes(path, headers) for conn, (path, headers) in zip(connections, requests, strict=True)]
    for conn, payload in zip(connections, payloads, strict=True):
        conn.writer.write(payload)
    await asyncio.gather(*(conn.writer.drain() for conn in connections))
    return list(await asyncio.gather(*(conn.read_reply() for conn in connections)))


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gateway:
    """``meterguard serve`` in its own process group, with N uvicorn workers."""

    def __init__(
        self,
        app: str,
        config: Path,
        store: str,
        workers: int,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,  # where stderr goes (default: a pipe read only when start fails)
    ) -> None:
        self.port = free_port()
        self.log = log
        self.args = [
            sys.executable, "-m", "meterguard", "serve", app, "--config", str(config), "--store", store,
            "--workers", str(workers), "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Gateway:
        stderr = self.log.open("ab") if self.log is not None else subprocess.PIPE
        self.process = subprocess.Popen(
            self.args, env=self.env, cwd=ROOT, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        if self.log is not None:
            stderr.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.log.read_text() if self.log is not None else self.process.stderr.read().decode()  # type: ignore[union-attr]
                raise RuntimeError(f"gateway exited: {output[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("gateway did not answer /health in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
