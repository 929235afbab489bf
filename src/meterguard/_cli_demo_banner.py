"""What ``meterguard demo`` prints once it is up: the keys it made and commands to try with them."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit


def demo_banner(made: Sequence[Any], guard: Any, base: str, token: str, store: tuple[str, str], plans: str) -> str:
    """``store``: the URL the CLI can use (with its key prefix, which the store's own url drops), and
    the same with why it was chosen."""
    config = guard.config
    admin = base + config.admin_path
    free = next((m for m in made if m.plan == "free"), made[0])
    pro = next((m for m in made if m.plan == "pro"), made[-1])
    url, shown = store
    if urlsplit(url).scheme == "memory":
        inspect = [
            "  # the CLI reads a shared store, not this process: run the demo on Redis to use it, e.g.",
            "  #   meterguard demo --store redis://127.0.0.1:6379/0",
        ]
    else:
        inspect = [
            "  # the same usage from the CLI (the demo's plans file and store):",
            f"  meterguard usage {free.customer} --config {shlex.quote(plans)} --store '{url}'",
            f"  meterguard statement {pro.customer} --period $(date -u +%Y-%m) --config {shlex.quote(plans)} "
            f"--store '{url}'",
        ]
    lines = [
        "meterguard demo: the posts API behind meterguard",
        f"  store: {shown}",
        f"  plans: {plans}",
        "",
        "API keys (one customer per plan; shown this once):",
        *(f"  {m.plan:<11} {m.customer:<17} {m.key}" for m in made),
        "",
        f"admin token ({config.admin_token_env}): {token}",
        "",
        "Try:",
        "  # a metered call: see RateLimit, X-RateLimit-* and X-Meterguard-Usage",
        f"  curl -i -H 'x-api-key: {free.key}' '{base}/v1/posts/search?q=redis'",
        "",
        "  # the free plan allows 1 call a second and 5 a minute: one a second, the 5-a-minute window",
        "  # answers 429 (with Retry-After) once this minute's 5 calls are used",
        f"  for i in $(seq 1 6); do curl -s -o /dev/null -w '%{{http_code}}\\n' "
        f"-H 'x-api-key: {free.key}' '{base}/v1/posts/search?q=redis'; sleep 1; done",
        "",
        "  # the archive costs 5 calls and is pro/enterprise only (the free key gets 403)",
        f"  curl -i -H 'x-api-key: {pro.key}' '{base}/v1/posts/archive?q=python&limit=20'",
        "",
        "  # usage through the admin API, and your own usage with your key",
        f"  curl -s -H 'Authorization: Bearer {token}' {admin}/customers/{free.customer}/usage",
        f"  curl -s -H 'Authorization: Bearer {token}' '{admin}/customers/{free.customer}/usage/daily?days=7'",
        f"  curl -s -H 'x-api-key: {pro.key}' {admin}/me/usage",
        "",
        *inspect,
        "",
        f"Serving on {base} (Ctrl+C to stop)",
    ]
    return "\n".join(lines)
