"""docs/quickstart.md, followed as written: its files are saved, its shell blocks run in one bash
session (the server block in the background), against the test Redis under a prefix of its own.

Markers in the page (HTML comments, invisible on GitHub) say what a block is for:
``<!-- quickstart: file NAME -->`` saves the next block as NAME, ``skip`` leaves it out (pip,
docker), ``background`` starts it and waits for the server, ``output`` compares the next block
with what the shell block before it printed. Only ``127.0.0.1:6379/0`` and port 8000 are
replaced: by the test Redis (with this test's key prefix) and a free port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .conftest import REDIS_URL, drop_keys
from .wave import free_port

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"(?:<!-- quickstart: (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```\n", re.DOTALL)
SEPARATOR = "@@quickstart block {}@@"


def blocks() -> list[tuple[str, str, str]]:
    """``(marker, language, body)`` of every fenced block, in order."""
    return [(m["marker"] or "", m["lang"], m["body"]) for m in BLOCK.finditer(PAGE.read_text())]


def test_the_page_has_what_the_harness_needs() -> None:
    found = blocks()
    markers = [marker for marker, _, _ in found]
    assert "file app.py" in markers and "file plans.yaml" in markers and "background" in markers
    assert markers.count("output") >= 1
    assert all(lang in ("sh", "python", "yaml", "text") for _, lang, _ in found)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the quickstart's commands use curl")
async def test_quickstart_runs_as_written(tmp_path: Path, key_prefix: str) -> None:
    port = free_port()
    store = f"{REDIS_URL}?prefix={key_prefix}"

    def adapt(text: str) -> str:
        return text.replace("redis://127.0.0.1:6379/0", store).replace("8000", str(port))

    script = ["set -euo pipefail", "trap 'kill $SERVER 2>/dev/null || true' EXIT", "SERVER="]
    expected: dict[int, str] = {}
    shell_blocks = 0
    for marker, lang, body in blocks():
        if marker == "skip":
            continue
        if marker.startswith("file "):
            (tmp_path / marker.removeprefix("file ")).write_text(adapt(body))
        elif marker == "output":
            expected[shell_blocks - 1] = body
        elif marker == "background":
            command = adapt(body).strip()
            script += [
                f"{command} > server.log 2>&1 &",
                "SERVER=$!",
                f"for i in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.1:{port}/health && break; "
                "sleep 0.1; done",
            ]
        elif lang == "sh":
            script += [f"echo '{SEPARATOR.format(shell_blocks)}'", adapt(body)]
            shell_blocks += 1
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MG_STORE", None)
    env.pop("MG_ADMIN_TOKEN", None)
    try:
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        server_log = (tmp_path / "server.log").read_text() if (tmp_path / "server.log").exists() else ""
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server_log}"
        assert "Traceback" not in server_log, server_log
        outputs = re.split(r"@@quickstart block (\d+)@@\n", done.stdout)
        printed = {int(outputs[i]): outputs[i + 1] for i in range(1, len(outputs), 2)}
        for index, text in expected.items():
            assert printed[index] == text, (index, printed[index])
        assert "KEY=" not in done.stdout

        period = datetime.now(UTC).strftime("%Y-%m")
        cli = [sys.executable, "-m", "meterguard"]
        usage = subprocess.run(
            [*cli, "usage", "acme", "--config", "plans.yaml", "--store", store, "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        document = json.loads(usage.stdout)
        assert (document["calls"]["used"], document["records"]["used"]) == (29, 255)
        assert document["uncounted"] == 0
        statement = subprocess.run(
            [*cli, "statement", "acme", "--period", period, "--config", "plans.yaml", "--store", store,
             "--format", "json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert json.loads(statement.stdout)["total"] == "31.50"  # as the page's table says
        assert "31.50" in PAGE.read_text()
    finally:
        await drop_keys(REDIS_URL, key_prefix)
