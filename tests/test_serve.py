"""``meterguard serve`` runs like uvicorn (CONTRACT section 11; issues 11 and 12).

Each test starts the real command in a process of its own and asks the served app how it is
being served (tests/_serve_app.py): the event loop's class, the module of uvicorn's HTTP
protocol, the ASGI root_path and client. Before this change, one worker ran under
``asyncio.run`` (the stdlib loop: "asyncio.unix_events._UnixSelectorEventLoop" where uvloop is
installed) and wrote an access line per request; both assertions below failed then.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from meterguard import cli

from .conftest import REDIS_URL, drop_keys

ROOT = Path(__file__).resolve().parent.parent

PLANS = """\
version: 1
consistency: {consistency}
routes:
  - {{match: "GET /health", public: true}}
  - {{match: "GET /how", public: true}}
  - {{match: "GET /api/health", public: true}}  # with --root-path /api, uvicorn's path includes the prefix
  - {{match: "GET /api/how", public: true}}
  - {{match: "GET /v1/items", weight: 1}}
plans:
  basic:
    rate_limits: ["100000/minute"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int, out: Path, err: Path) -> None:
        self.process, self.port, self.out, self.err = process, port, out, err

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@contextmanager
def serving(tmp_path: Path, *args: str, app: str = "tests._serve_app:app", env: dict[str, str] | None = None,
            consistency: str = "exact") -> Iterator[Served]:  # fmt: skip
    """``meterguard serve APP --config ... ARGS`` until the block ends; stdout and stderr kept apart."""
    config = tmp_path / "plans.yaml"
    config.write_text(PLANS.format(consistency=consistency))
    port = free_port()
    out, err = tmp_path / f"stdout-{port}", tmp_path / f"stderr-{port}"
    command = [sys.executable, "-m", "meterguard", "serve", app, "--config", str(config), "--port", str(port), *args]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    for name in ("MG_LOG_FORMAT", "MG_STORE", "FORWARDED_ALLOW_IPS"):
        if name not in (env or {}):
            environment.pop(name, None)
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, env=environment, cwd=ROOT, stdout=stdout, stderr=stderr,
                                   start_new_session=True)  # fmt: skip
    served = Served(process, port, out, err)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited: {err.read_text()[-2000:]}")
            try:
                if httpx.get(f"{served.base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not answer: {err.read_text()[-2000:]}")
            time.sleep(0.1)
        yield served
    finally:
        served.stop()


def how(served: Served, path: str = "/how", **headers: str) -> dict[str, Any]:
    response = httpx.get(served.base + path, headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def test_one_worker_runs_uvicorns_loop_and_protocol_and_writes_no_access_log(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        first = how(served)
        believed = how(served, **{"x-forwarded-for": "203.0.113.9"})
    assert uvloop_installed(), "uvicorn[standard] is a dependency: uvloop must be there"
    assert first["loop"] == "uvloop.Loop"
    assert first["http"] == "uvicorn.protocols.http.httptools_impl"
    # uvicorn's default, kept: proxy headers are believed from 127.0.0.1 (the test's address)
    assert (first["client"], believed["client"]) == ("127.0.0.1", "203.0.113.9")
    logs = served.out.read_text() + served.err.read_text()
    assert "Uvicorn running on" in logs  # the server's own lines are still written
    assert "GET /how" not in logs, "an access line per request, without --access-log"


def test_pass_through_options_and_json_logs(tmp_path: Path) -> None:
    args = ["--access-log", "--root-path", "/api", "--no-proxy-headers", "--log-level", "info"]
    with serving(tmp_path, *args, env={"MG_LOG_FORMAT": "json"}) as served:
        seen = how(served, **{"x-forwarded-for": "203.0.113.9"})
    assert seen["root_path"] == "/api"
    assert seen["client"] == "127.0.0.1", "--no-proxy-headers: X-Forwarded-For is not believed"
    assert served.out.read_text() == ""
    lines = [json.loads(line) for line in served.err.read_text().splitlines()]  # every line is JSON
    assert any(line["logger"] == "uvicorn.error" and "Uvicorn running" in line["message"] for line in lines)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any("GET /api/how" in line["message"] for line in access), "--access-log writes one line per request"
    assert any(line["logger"] == "meterguard" and "memory://" in line["message"] for line in lines)


def test_forwarded_allow_ips_and_text_logs(tmp_path: Path) -> None:
    # 127.0.0.1 is not in the list: its X-Forwarded-For is not believed.
    with serving(tmp_path, "--forwarded-allow-ips", "10.0.0.0/8", "--log-format", "text",
                 env={"MG_LOG_FORMAT": "json"}) as served:  # fmt: skip
        seen = how(served, **{"x-forwarded-for": "203.0.113.9"})
    assert seen["client"] == "127.0.0.1"
    text = served.err.read_text()
    assert "Uvicorn running on" in text and not text.lstrip().startswith("{"), "--log-format beats MG_LOG_FORMAT"


def _cli(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(cli.main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def redis_store(key_prefix: str) -> Iterator[str]:
    yield f"{REDIS_URL}?prefix={key_prefix}"
    import asyncio

    asyncio.run(drop_keys(REDIS_URL, key_prefix))


def test_several_workers_get_the_same_options(tmp_path: Path, redis_store: str) -> None:
    args = ["--workers", "2", "--store", redis_store, "--root-path", "/api", "--log-format", "json", "--access-log"]
    with serving(tmp_path, *args) as served:
        seen = [how(served) for _ in range(8)]
    assert {body["loop"] for body in seen} == {"uvloop.Loop"}
    assert {body["http"] for body in seen} == {"uvicorn.protocols.http.httptools_impl"}
    assert {body["root_path"] for body in seen} == {"/api"}
    lines = [json.loads(line) for line in served.err.read_text().splitlines()]
    access = [line["message"] for line in lines if line["logger"] == "uvicorn.access"]
    assert sum("GET /api/how" in message for message in access) == 8


@pytest.mark.parametrize(
    ("app", "workers"),
    [
        ("tests._serve_app:no_lifespan", 1),
        ("tests._serve_app:no_lifespan", 2),
        ("tests._serve_app:failing_shutdown", 1),
    ],
    ids=["no-lifespan", "no-lifespan-2-workers", "failing-shutdown"],
)
def test_sigterm_flushes_what_the_gateway_holds(
    tmp_path: Path, redis_store: str, monkeypatch: pytest.MonkeyPatch, app: str, workers: int
) -> None:
    """The fast path keeps usage in the process and flushes it every second; a SIGTERM right
    after the requests must flush it at shutdown. MeterGuard does that on the ASGI lifespan
    shutdown, which these apps never complete: one does not speak lifespan (Django's handler
    does not), the other's shutdown fails. Before: the process ended inside uvicorn's re-raised
    SIGTERM without closing the gateway, and 2 of 20 calls were counted (one worker, no lifespan).
    Now the lifespan is answered for an app that does not speak it (every worker), and one
    worker also closes the gateway at the end of uvicorn's shutdown whatever the app said."""
    for name in ("MG_STORE", "MG_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    config = tmp_path / "plans.yaml"
    config.write_text(PLANS.format(consistency="fast"))
    opts = ["--config", str(config), "--store", redis_store]
    _cli(runner, "customers", "create", "flush-co", "--plan", "basic", *opts)
    key = _cli(runner, "keys", "create", "flush-co", *opts).strip()
    args = ["--store", redis_store, "--workers", str(workers)]
    with serving(tmp_path, *args, app=app, consistency="fast") as served:
        statuses = []
        for _ in range(20):  # a connection each: the kernel spreads them over the workers
            statuses.append(httpx.get(f"{served.base}/v1/items", headers={"x-api-key": key}).status_code)
        assert statuses == [200] * 20
        assert served.stop() in (0, -signal.SIGTERM)
    usage = json.loads(_cli(runner, "usage", "flush-co", "--json", *opts))
    assert usage["calls"]["used"] == 20
